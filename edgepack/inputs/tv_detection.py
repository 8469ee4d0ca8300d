"""torchvision's single-stage detectors (SSD, SSDLite, RetinaNet, FCOS) as edgepack detect models.

In eval mode these modules return post-processed detections: a list of per-image dicts whose length varies with
the photo, after a resize and normalisation of their own (``model.transform``). No INT8 format ships that, and
edgepack's detect task judges fixed candidates. A factory that returns one of them is adapted here to the
detect contract, with torchvision's own parts and arithmetic:

    normalised (N, 3, H, W) -> backbone -> head -> box_coder decoding against the model's anchors for H x W
    -> boxes (N, K, 4) xyxy in input pixels, clipped to the image, and scores (N, K, C)

Scores are what each model's own post-processing scores with: SSD's softmax without the background column,
RetinaNet's sigmoid, FCOS's sqrt(sigmoid(class) x sigmoid(centre-ness)). NMS, top-k and the score threshold
then run in float in edgepack (validation and the bundle's run.py), as for every detector. The anchors are
computed once for the build's input size and are constants of the graph. The normalisation of
``model.transform`` (pixels / 255, its image_mean and image_std) becomes the build's preprocessing, with the
photo's short side resized to the input height and centre-cropped, unless the user gave other values.

Two-stage detectors (Faster / Mask / Keypoint R-CNN) pick a varying number of regions at run time (RoIAlign
over proposals): they are refused with what to use instead.
"""

from __future__ import annotations

from typing import Any

FAMILIES = ("SSD", "RetinaNet", "FCOS")


def family(module: Any) -> str | None:
    """'SSD', 'RetinaNet' or 'FCOS' for a torchvision single-stage detector (SSDLite is an SSD), 'two-stage' for
    a GeneralizedRCNN, else None."""
    import sys

    if "torchvision" not in sys.modules:  # a model that never imported torchvision is none of its detectors
        return None
    from torchvision.models.detection import fcos, generalized_rcnn, retinanet, ssd

    if isinstance(module, generalized_rcnn.GeneralizedRCNN):
        return "two-stage"
    for name, cls in zip(FAMILIES, (ssd.SSD, retinanet.RetinaNet, fcos.FCOS), strict=True):
        if isinstance(module, cls):
            return name
    return None


def refuse_two_stage(spec: str, module: Any) -> None:
    from edgepack.errors import InputError

    raise InputError(f"{spec} is a torchvision two-stage detector ({type(module).__name__}): it crops a varying "
                     "number of proposed regions at run time (RoIAlign), which no fixed-shape INT8 graph holds",
                     hint="use a single-stage torchvision detector (ssdlite320_mobilenet_v3_large, ssd300_vgg16, "
                          "retinanet_resnet50_fpn_v2, fcos_resnet50_fpn), which edgepack builds as they are, or "
                          "export your own (N, K, 4) boxes and (N, K, C) scores")


def preprocess(module: Any, shape: tuple[int, ...]) -> dict:
    """The preprocessing ``module.transform`` applies, as edgepack's Preprocess fields, at input ``shape``."""
    t = module.transform
    return {"scale": 1 / 255, "mean": [float(v) for v in t.image_mean], "std": [float(v) for v in t.image_std],
            "resize": int(shape[2]), "crop": int(shape[2])}


def adapt(module: Any, shape: tuple[int, ...]) -> Any:
    """The decoded detector (a torch.nn.Module) for input ``shape`` (N, 3, H, W)."""
    import torch

    class Decoded(torch.nn.Module):
        """Backbone, head and anchor decoding of a torchvision {SSD, RetinaNet, FCOS}: normalised
        (N, 3, H, W) -> (boxes (N, K, 4) xyxy pixels, scores (N, K, C))."""

        def __init__(self, det: torch.nn.Module, kind: str, size: tuple[int, int]) -> None:
            super().__init__()
            from torchvision.models.detection.image_list import ImageList

            self.backbone, self.head, self.box_coder, self.kind, self.size = (
                det.backbone, det.head, det.box_coder, kind, size)
            was_training = det.training
            det.eval()
            with torch.no_grad():
                x = torch.zeros(1, 3, *size)
                anchors = det.anchor_generator(ImageList(x, [size]), self._features(x))[0]  # (K, 4) xyxy pixels
            det.train(was_training)
            self.register_buffer("anchors", anchors)

        def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
            features = self.backbone(x)
            return [features] if isinstance(features, torch.Tensor) else list(features.values())

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            from torchvision.ops import boxes as box_ops

            out = self.head(self._features(x))
            reg, logits = out["bbox_regression"], out["cls_logits"]
            n = reg.shape[0]
            flat, anchors = reg.reshape(-1, 4), self.anchors.repeat(n, 1)
            if self.kind == "FCOS":
                boxes = self.box_coder.decode(flat, anchors)
                scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(out["bbox_ctrness"]))
            else:
                boxes = self.box_coder.decode_single(flat, anchors)
                scores = torch.softmax(logits, dim=-1)[..., 1:] if self.kind == "SSD" else torch.sigmoid(logits)
            boxes = box_ops.clip_boxes_to_image(boxes.reshape(n, -1, 4), self.size)
            return boxes, scores

    kind = family(module)
    was_training = module.training
    decoded = Decoded(module, kind, (int(shape[2]), int(shape[3])))
    decoded.train(was_training)
    return decoded
