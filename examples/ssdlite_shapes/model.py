"""SSDLite shapes detector for edgepack: torchvision's ``ssdlite320_mobilenet_v3_large``, trained here from scratch.

``create_model()`` is the entry point edgepack imports (``examples.ssdlite_shapes.model:create_model``).

- Input: (N, 3, SIZE, SIZE) float32, RGB, ``(pixel / 255 - 0.5) / 0.5`` (torchvision's SSDLite normalisation,
  which edgepack applies with ``--scale 1/255 --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5``).
- Outputs, two tensors (edgepack's detect contract): ``boxes`` (N, K, 4) xyxy in input pixels, clipped to the
  image, and ``scores`` (N, K, 3) class probabilities (softmax over background + 3 classes, background dropped),
  K = 1,170 anchors at SIZE 192. Boxes and scores stay separate so that pixels (0-192) and probabilities (0-1)
  never share one INT8 scale.

The graph holds the backbone, the SSDLite head and the anchor decoding (torchvision's ``box_coder`` arithmetic,
weights 10, 10, 5, 5, with the anchors of ``model.anchor_generator`` precomputed as constants for the fixed
size); NMS is not in it (edgepack.tasks.postprocess runs it in float, in validation and on the device).

Builder choices (see README): ``weights=None, weights_backbone=None`` (nothing is downloaded), so torchvision
uses MobileNetV3's reduced tail; ``width_mult=0.5`` (passed through the builder's kwargs to
``mobilenet_v3_large``) and SIZE 192 instead of 320, so that training from scratch fits in about 30 min on one
CPU thread and the weights fit in about 2 MB. The committed weights are a float16 state dict (``WEIGHTS``), cast back
to float32 on load.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from examples.ssdlite_shapes.data import CLASSES, SIZE

WIDTH_MULT = 0.5
NUM_CLASSES = len(CLASSES)          # foreground classes; torchvision's SSD adds background as class 0
WEIGHTS = Path(__file__).with_name("ssdlite_shapes.pt")
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # torchvision SSD's BoxCoder weights
BBOX_XFORM_CLIP = math.log(1000.0 / 16)  # torchvision's BoxCoder clamp of dw, dh before exp


def create_ssd() -> nn.Module:
    """torchvision's SSDLite (train or eval per the caller), random init, its transform fixed at SIZE x SIZE."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    ssd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1,
                                        width_mult=WIDTH_MULT)
    # the builder fixes 320 x 320; the same transform (resize to a fixed size, then (x - 0.5) / 0.5) at SIZE
    ssd.transform = GeneralizedRCNNTransform(SIZE, SIZE, [0.5] * 3, [0.5] * 3, size_divisible=1,
                                             fixed_size=(SIZE, SIZE))
    return ssd


class DecodedSSD(nn.Module):
    """Backbone + head + anchor decoding of a torchvision SSD: normalised (N, 3, SIZE, SIZE) ->
    (boxes (N, K, 4) xyxy pixels, scores (N, K, C) probabilities)."""

    def __init__(self, ssd: nn.Module) -> None:
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.backbone, self.head = ssd.backbone, ssd.head
        self.size = SIZE
        was_training = ssd.training
        ssd.eval()
        with torch.no_grad():
            x = torch.zeros(1, 3, SIZE, SIZE)
            features = list(ssd.backbone(x).values())
            anchors = ssd.anchor_generator(ImageList(x, [(SIZE, SIZE)]), features)[0]   # (K, 4) xyxy pixels
        ssd.train(was_training)
        wh = anchors[:, 2:] - anchors[:, :2]
        self.register_buffer("anchor_ctr", anchors[:, :2] + 0.5 * wh)
        # dx / wx * w  ->  dx * (w / wx): one multiply per coordinate in the graph
        self.register_buffer("anchor_scale", wh / torch.tensor(BOX_WEIGHTS[:2]))
        # half the decoded size, 0.5 * exp(dw) * w, as exp(dw + log(w / 2)): no multiply after the exp. With one
        # (0.5 * exp(dw) * w, or exp(dw) * (w / 2)) the full-integer TFLite converter gave the small factor
        # (0.1-2) the scale of the product (0.43 px): boxes off by 4 px (median), mAP@0.5 down 10-36 points
        self.register_buffer("anchor_log_half_wh", torch.log(0.5 * wh))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(list(self.backbone(x).values()))
        reg, logits = out["bbox_regression"], out["cls_logits"]
        ctr = reg[..., :2] * self.anchor_scale + self.anchor_ctr
        dwh = torch.clamp(reg[..., 2:] / torch.tensor(BOX_WEIGHTS[2:]), max=BBOX_XFORM_CLIP)
        half = torch.exp(dwh + self.anchor_log_half_wh)
        # clip each corner before the concat, so the concatenated tensor's INT8 range is the image (0-SIZE px)
        boxes = torch.cat([torch.clamp(ctr - half, 0.0, float(self.size)),
                           torch.clamp(ctr + half, 0.0, float(self.size))], dim=-1)
        scores = torch.softmax(logits, dim=-1)[..., 1:]
        return boxes, scores


def load_weights(ssd: nn.Module, path: str | Path = WEIGHTS) -> None:
    """Load a (float16) state dict into ``ssd``, cast back to float32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train it with `python -m examples.ssdlite_shapes.train`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    ssd.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def create_model(weights: str | Path = WEIGHTS) -> nn.Module:
    """The trained shapes detector (eval mode): input 1x3xSIZExSIZE, outputs boxes and scores."""
    ssd = create_ssd()
    load_weights(ssd, weights)
    return DecodedSSD(ssd.eval()).eval()
