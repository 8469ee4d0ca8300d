"""LRASPP shapes segmenter for edgepack: torchvision's LR-ASPP head on a MobileNetV3-Large backbone, 4 classes.

``create_model()`` is the entry point edgepack imports (``examples.lraspp_shapes.model:create_model``).
Input: (N, 3, 160, 160) float32, RGB, ``(pixel / 255 - mean) / std`` with ImageNet's mean and std (edgepack's
default preprocessing). Output: (N, 4, 160, 160) class scores (background, rectangle, circle, triangle): the
``"out"`` of torchvision's dict, which ``edgepack --task segment`` takes (mask = argmax over the classes).

The network is torchvision's, built from its public parts exactly as ``lraspp_mobilenet_v3_large`` builds it
(``mobilenet_v3_large(dilated=True)`` features, the C2 block at output stride 8 as the "low" tap and the last
block at stride 16 as the "high" one, ``LRASPP`` on top), with one change: ``reduced_tail=True``, the
MobileNetV3 paper's configuration for its detection and LR-ASPP segmentation models (Howard et al. 2019,
the channels of the last stage halved, 960 -> 480). torchvision's builder does not expose it. It halves the
parameters (3.22 M -> 1.74 M), so the committed fp16 weights are 3.5 MB rather than 6.4 MB, and a training
step on one CPU thread is about 1.25x faster. ``build_lraspp(reduced_tail=False)`` is torchvision's
``lraspp_mobilenet_v3_large`` layer for layer (tests/test_example_lraspp_model.py loads one into the other).

No pretrained weights exist offline: ``train.py`` trains it from scratch (``weights=None,
weights_backbone=None``). The weights are committed as an fp16 state dict (``lraspp_shapes.pt``) and cast back
to float32 on load.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IMAGE_SIZE = 160
CLASSES = ("background", "rectangle", "circle", "triangle")
NUM_CLASSES = len(CLASSES)
MEAN = (0.485, 0.456, 0.406)   # ImageNet's: edgepack's default --mean / --std
STD = (0.229, 0.224, 0.225)
WEIGHTS_PATH = Path(__file__).with_name("lraspp_shapes.pt")


def build_lraspp(num_classes: int = NUM_CLASSES, reduced_tail: bool = True) -> nn.Module:
    """torchvision's LRASPP on MobileNetV3-Large (dilated), randomly initialised; returns its {"out": ...} dict.

    The taps follow torchvision.models.segmentation.lraspp._lraspp_mobilenetv3 line for line.
    """
    from torchvision.models import mobilenet_v3_large
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation import LRASPP

    features = mobilenet_v3_large(weights=None, dilated=True, reduced_tail=reduced_tail).features
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    low, high = stages[-4], stages[-1]   # C2 (output stride 8) and the last block (output stride 16)
    backbone = IntermediateLayerGetter(features, return_layers={str(low): "low", str(high): "high"})
    return LRASPP(backbone, features[low].out_channels, features[high].out_channels, num_classes)


class ShapesSegmenter(nn.Module):
    """The LRASPP network with a tensor output: forward(x) is ``net(x)["out"]``, (N, C, H, W) class scores."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def load_weights(net: nn.Module, path: str | Path = WEIGHTS_PATH) -> None:
    """Load the committed fp16 state dict into ``net`` as float32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train it with `python -m examples.lraspp_shapes.train`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def create_model(weights_path: str | Path = WEIGHTS_PATH) -> nn.Module:
    """The trained shapes segmenter (eval mode): input 1x3x160x160, output 1x4x160x160 class scores."""
    net = build_lraspp()
    load_weights(net, weights_path)
    return ShapesSegmenter(net).eval()
