"""torchvision's single-stage detectors adapted to the detect contract (edgepack.inputs.tv_detection): the
decoded candidates hold the detections torchvision's own post-processing finds, for SSD(Lite) and FCOS."""

from __future__ import annotations

import pytest
import torch

from edgepack.inputs import tv_detection

SIZE = 128


def _ssdlite():
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4, width_mult=0.25)


def _fcos():
    from torchvision.models.detection import fcos_resnet50_fpn

    return fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)


@pytest.mark.parametrize("make, family, classes", [(_ssdlite, "SSD", 3), (_fcos, "FCOS", 3)], ids=["ssdlite", "fcos"])
def test_decoded_candidates_hold_torchvisions_own_detections(make, family, classes):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        det = make().eval()
    assert tv_detection.family(det) == family
    pre = tv_detection.preprocess(det, (1, 3, SIZE, SIZE))
    assert pre["resize"] == pre["crop"] == SIZE and pre["mean"] == [float(v) for v in det.transform.image_mean]
    decoded = tv_detection.adapt(det, (1, 3, SIZE, SIZE)).eval()
    torch.manual_seed(1)
    pixels = torch.rand(1, 3, SIZE, SIZE)
    x = (pixels - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        boxes, scores = decoded(x)
        # torchvision's own path: its transform (same size: no resize), head, decoding, threshold and NMS
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        t = det.transform
        det.transform = GeneralizedRCNNTransform(SIZE, SIZE, t.image_mean, t.image_std, size_divisible=1,
                                                 fixed_size=(SIZE, SIZE))
        if hasattr(det, "score_thresh"):
            det.score_thresh = 0.0
        found = det(list(pixels))[0]
    assert boxes.shape[:2] == scores.shape[:2] and boxes.shape[2] == 4 and scores.shape[2] == classes
    assert float(boxes.min()) >= 0 and float(boxes.max()) <= SIZE
    assert len(found["boxes"]) > 0
    # its best detection is one of the decoded candidates, with the same score for its class
    best = int(found["scores"].argmax())
    box, score, label = found["boxes"][best], float(found["scores"][best]), int(found["labels"][best])
    column = label - 1 if family == "SSD" else label   # SSD's class 0 is background, dropped from the scores
    near = (boxes[0] - box).abs().max(dim=1).values < 1e-3
    assert bool(near.any()), "torchvision's best box is not among the decoded candidates"
    assert abs(float(scores[0][near][:, column].max()) - score) < 1e-4


def test_other_modules_are_left_alone():
    assert tv_detection.family(torch.nn.Conv2d(3, 3, 1)) is None
