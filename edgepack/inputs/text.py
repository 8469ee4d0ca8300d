"""Text classifiers: load a local HF folder, tokenize, export to ONNX, quantize to INT8 (text data files are read by
``edgepack.inputs.text_files``).

Inputs are a dict of int64 arrays (N, L) named as the tokenizer names them (``input_ids``, ``attention_mask``
and ``token_type_ids`` when the model uses them), with one fixed sequence length L. Tokenization uses the
``tokenizers`` library and the model's ``tokenizer.json`` only, exactly what the bundle's runner does on the
device, so calibration, validation and the device see the same ids.

INT8 (``quantize_text_onnx``, ``quantize_text_dynamic``, ``pick_int8``) lives in
``edgepack.backends.onnx_text_quantize``.

Heavy imports (torch, transformers, onnxruntime) happen inside functions.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import InputError
from edgepack.inputs.text_files import PAIR_KEY, TEXT_SUFFIXES, read_texts  # noqa: F401 (their home before)
from edgepack.util import require

log = logging.getLogger(__name__)

#: Order of the ONNX inputs when present. The device runner feeds whatever the model declares.
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
_HF_WEIGHTS = ("model.safetensors",)
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "USE_TF": "0", "USE_TORCH": "1"}


# --- sources ------------------------------------------------------------------------------------------------


def offline_env() -> None:
    """Keep transformers off the network and from importing TensorFlow (set once, before importing it)."""
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def _wrapper_class() -> type:
    """The HF wrapper module class, defined lazily so that ``import edgepack.inputs.text`` does not import torch."""
    import torch

    class _HFTextClassifier(torch.nn.Module):
        """A transformers classifier as forward(input_ids, attention_mask, token_type_ids=None) -> logits."""

        def __init__(self, model: Any, input_names: Sequence[str]):
            super().__init__()
            self.model = model
            self.input_names = tuple(input_names)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None and "token_type_ids" in self.input_names:
                kwargs["token_type_ids"] = token_type_ids
            return self.model(**kwargs).logits

    return _HFTextClassifier


def load_hf_folder(path: str | Path, max_length: int | None = None) -> tuple[Any, Path, dict]:
    """Load a local transformers text classifier folder, offline, safetensors only, no remote code.

    Returns (module, tokenizer.json path, tokenizer settings). The module's
    forward(input_ids, attention_mask, token_type_ids=None) returns (N, num_labels) float32 logits.
    """
    folder = Path(path)
    _check_hf_folder(folder)
    require(("transformers", "tokenizers", "safetensors"), extra="text", what="a transformers text model")
    offline_env()
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    if getattr(config, "auto_map", None):
        log.warning(
            "%s declares custom code (auto_map); it is ignored: only built-in architectures load", folder
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder),
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=True,
                attn_implementation="eager",
            )
    except (ValueError, OSError, KeyError) as exc:
        raise InputError(
            f"cannot load {folder} as a text classifier: {str(exc).splitlines()[0][:240]}",
            hint="the folder needs a built-in architecture's config.json with a "
            "*ForSequenceClassification head and model.safetensors",
        ) from None
    settings = tokenizer_settings(folder / "tokenizer.json", max_length)
    settings["max_length"] = _fit_positions(model, folder, settings["max_length"], given=max_length is not None)
    names = forward_input_names(model, settings["model_input_names"])
    settings["model_input_names"] = names
    return _wrapper_class()(model, names).eval(), folder / "tokenizer.json", settings


def position_limit(model: Any) -> int | None:
    """How many tokens the model's absolute position embeddings hold (None: no such table, e.g. relative or rotary
    positions). RoBERTa-style embeddings number positions from their pad id + 1, so 514 rows hold 512 tokens."""
    emb = getattr(getattr(model, "base_model", None), "embeddings", None)
    table = getattr(emb, "position_embeddings", None)
    rows = getattr(table, "num_embeddings", None)
    if not isinstance(rows, int):
        return None
    pad = getattr(emb, "padding_idx", None)
    return rows - (pad + 1 if isinstance(pad, int) else 0)


def _fit_positions(model: Any, folder: Path, length: int, *, given: bool) -> int:
    """``length`` when the model's position embeddings hold it. Beyond them, a --max-length is refused and a
    default (the tokenizer's, else 128) is lowered to what they hold: unchecked, a BERT with 64 positions failed
    export with "size of tensor a (128) must match ... b (64)", and a RoBERTa exported fine and then failed in
    onnxruntime (Gather index out of bounds) with a hint about image preprocessing."""
    limit = position_limit(model)
    if limit is None or length <= limit:
        return length
    if given:
        raise InputError(f"--max-length {length} is longer than {folder.name} takes: its position embeddings hold "
                         f"{limit} tokens", hint=f"pass --max-length {limit} or less")
    log.warning("%s: sequence length %d (the default) is longer than its position embeddings hold; using %d tokens",
                folder.name, length, limit)
    return limit


def _check_hf_folder(folder: Path) -> None:
    """Collect every missing file, then raise once."""
    if not folder.is_dir():
        raise InputError(f"model folder not found: {folder}")
    missing = [n for n in ("config.json", "tokenizer.json") if not (folder / n).is_file()]
    if not any((folder / n).is_file() for n in _HF_WEIGHTS):
        missing.append("model.safetensors")
        if any(folder.glob("*.bin")):
            raise InputError(
                f"{folder} holds pickled weights (*.bin) only: refused",
                hint="re-save with model.save_pretrained(dir, safe_serialization=True)",
            )
    if missing:
        raise InputError(
            f"{folder} is not a complete transformers folder: missing {', '.join(missing)}",
            hint="save with model.save_pretrained(dir) and tokenizer.save_pretrained(dir) "
            "(a fast tokenizer writes tokenizer.json)",
        )


def forward_input_names(model: Any, tokenizer_names: Sequence[str]) -> list[str]:
    """The tokenizer's input names that the model's forward accepts, in INPUT_ORDER."""
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    return [n for n in INPUT_ORDER if n in tokenizer_names and n in accepted]


def tokenizer_settings(tokenizer_json: str | Path, max_length: int | None = None) -> dict:
    """What the device must reproduce: {lowercase, max_length, padding, truncation, model_input_names,
    pad_id, pad_token}.

    Read from tokenizer.json (normalizer, truncation, padding) and tokenizer_config.json beside it if present.
    ``max_length`` (tokens) overrides the file's; without either it is 128.
    """
    path = Path(tokenizer_json)
    spec = _read_tokenizer_json(path)
    cfg_path = path.with_name("tokenizer_config.json")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    trunc, pad = spec.get("truncation") or {}, spec.get("padding") or {}
    length = int(max_length or trunc.get("max_length") or min(128, _model_max_length(cfg) or 128))
    names = cfg.get("model_input_names") or list(INPUT_ORDER)
    pad_token, pad_id = _pad(path, pad, cfg)
    return {
        "lowercase": _lowercase(spec.get("normalizer")),
        "max_length": length,
        "padding": "max_length",
        "truncation": True,
        "model_input_names": [n for n in INPUT_ORDER if n in names],
        "pad_id": pad_id,
        "pad_token": pad_token,
        # XLNet pads on the left (its classifier reads the last position) with token type 3
        "pad_type_id": int(pad.get("pad_type_id", 0)),
        "padding_side": _side(pad.get("direction") or cfg.get("padding_side")),
        "truncation_side": _side(trunc.get("direction") or cfg.get("truncation_side")),
    }


def _side(value: Any) -> str:
    """'left' or 'right' (tokenizer.json writes Left / Right, tokenizer_config.json left / right)."""
    return "left" if str(value).lower() == "left" else "right"


def _model_max_length(cfg: dict) -> int | None:
    """tokenizer_config.json's model_max_length (transformers writes 1e30 when the tokenizer sets none)."""
    value = cfg.get("model_max_length")
    return int(value) if isinstance(value, (int, float)) and 0 < value < 1_000_000 else None


def _pad(path: Path, padding: dict, cfg: dict) -> tuple[str, int]:
    """(pad token, its id): tokenizer.json's padding section, else tokenizer_config.json's pad_token looked up in
    the vocabulary (a tokenizer.json saved without padding, as most are, pads with the model's own pad token: a
    RoBERTa's <pad> is id 1, where padding with id 0 put <s> in every padded position), else [PAD] / 0."""
    if padding:
        return padding.get("pad_token", "[PAD]"), int(padding.get("pad_id", 0))
    token = cfg.get("pad_token")
    token = token.get("content") if isinstance(token, dict) else token
    if isinstance(token, str) and token:
        from tokenizers import Tokenizer

        found = Tokenizer.from_file(str(path)).token_to_id(token)
        if found is not None:
            return token, int(found)
        log.warning("%s: pad token %r of tokenizer_config.json is not in the vocabulary; padding with id 0",
                    path.name, token)
    return "[PAD]", 0


def _read_tokenizer_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(
            f"tokenizer.json not found: {path}",
            hint="save a fast tokenizer with tokenizer.save_pretrained(dir)",
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None


def _lowercase(normalizer: dict | None) -> bool:
    """True when the normalizer (or one in a Sequence) lower-cases."""
    if not normalizer:
        return False
    if normalizer.get("type") == "Lowercase" or normalizer.get("lowercase"):
        return True
    return any(_lowercase(n) for n in normalizer.get("normalizers", []))


# --- tokens ------------------------------------------------------------------------------------------------


def tokenize(
    texts: Sequence[str | tuple[str, str]],
    tokenizer_json: str | Path,
    max_length: int,
    input_names: Sequence[str] = INPUT_ORDER,
    stats: dict | None = None,
) -> dict[str, np.ndarray]:
    """Token arrays {name: (N, max_length) int64} with truncation and right padding to ``max_length`` tokens.

    Uses only the ``tokenizers`` library, as the device runner does; ``input_names`` picks the outputs. A
    (text, text_pair) tuple is encoded as a sentence pair (its token_type_ids 1 on the second text). ``stats``,
    when given, gets ``truncated``: how many texts were longer than ``max_length`` tokens and cut.
    """
    from tokenizers import Tokenizer

    settings = tokenizer_settings(tokenizer_json, max_length)
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(max_length, direction=settings["truncation_side"])
    tok.enable_padding(length=max_length, pad_id=settings["pad_id"], pad_token=settings["pad_token"],
                       pad_type_id=settings["pad_type_id"], direction=settings["padding_side"])
    enc = tok.encode_batch(list(texts))
    if stats is not None:
        stats["truncated"] = sum(bool(e.overflowing) for e in enc)
    arrays = {
        "input_ids": [e.ids for e in enc],
        "attention_mask": [e.attention_mask for e in enc],
        "token_type_ids": [e.type_ids for e in enc],
    }
    return {n: np.asarray(arrays[n], dtype=np.int64).reshape(len(enc), max_length) for n in input_names}


def write_device_tokenizer(src: str | Path, dst: str | Path, settings: dict) -> None:
    """Write ``src`` (a tokenizer.json) to ``dst`` with the build's truncation and padding in it (length, pad token
    and id, sides): a tokenizer.json saved without them (most are) left the device's tokenizer, if it is not the
    bundle's run.py (DJL on Android reads tokenizer.json), to guess them; a RoBERTa's pad token and an XLNet's left
    padding came from tokenizer_config.json, which the bundle does not carry."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src))
    tok.enable_truncation(settings["max_length"], direction=settings.get("truncation_side", "right"))
    tok.enable_padding(length=settings["max_length"], pad_id=settings["pad_id"], pad_token=settings["pad_token"],
                       pad_type_id=settings.get("pad_type_id", 0), direction=settings.get("padding_side", "right"))
    tok.save(str(dst))


# --- export -------------------------------------------------------------------------------------------------


def example_inputs(input_names: Sequence[str], max_length: int) -> tuple:
    """(1, max_length) int64 torch tensors in INPUT_ORDER: ids and mask of ones, token types of zeros."""
    import torch

    return tuple(
        torch.zeros((1, max_length), dtype=torch.int64)
        if n == "token_type_ids"
        else torch.ones((1, max_length), dtype=torch.int64)
        for n in INPUT_ORDER
        if n in input_names
    )
