"""The SSDLite example's export wrapper (examples/ssdlite_shapes/model.py): its two outputs are torchvision's own
decoding of the same network, and the detections made from them are torchvision SSD's eval output. Offline,
seconds (a few 192 px scenes, the committed weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from examples.ssdlite_shapes import data, model


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    ssd = model.create_ssd()
    if model.WEIGHTS.is_file():
        model.load_weights(ssd)
    ssd.eval()
    return ssd, model.DecodedSSD(ssd).eval()


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(data.arrays("heldout", 3, seed=11)[0]).permute(0, 3, 1, 2).float() / 255


def _torchvision_detections(ssd, boxes, scores):
    """torchvision SSD.postprocess_detections' selection, applied to (boxes, scores) of one image."""
    from torchvision.ops import boxes as box_ops

    all_b, all_s, all_l = [], [], []
    for c in range(scores.shape[-1]):
        s = scores[:, c]
        keep = s > ssd.score_thresh
        s, b = s[keep], boxes[keep]
        s, idx = s.topk(min(ssd.topk_candidates, s.numel()))
        all_b.append(b[idx])
        all_s.append(s)
        all_l.append(torch.full_like(idx, c + 1))
    b, s, lab = torch.cat(all_b), torch.cat(all_s), torch.cat(all_l)
    keep = box_ops.batched_nms(b, s, lab, ssd.nms_thresh)[: ssd.detections_per_img]
    return b[keep], s[keep], lab[keep]


@torch.inference_mode()
def test_outputs_are_torchvisions_decoding(nets, images):
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import boxes as box_ops

    ssd, net = nets
    x = (images - 0.5) / 0.5
    boxes, scores = net(x)
    k = boxes.shape[1]
    assert boxes.shape == (3, k, 4) and scores.shape == (3, k, model.NUM_CLASSES)
    feats = list(ssd.backbone(x).values())
    head = ssd.head(feats)
    anchors = ssd.anchor_generator(ImageList(x, [(data.SIZE, data.SIZE)] * 3), feats)
    for i in range(3):
        want = box_ops.clip_boxes_to_image(ssd.box_coder.decode_single(head["bbox_regression"][i], anchors[i]),
                                           (data.SIZE, data.SIZE))
        torch.testing.assert_close(boxes[i], want, atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(scores[i], torch.softmax(head["cls_logits"][i], -1)[:, 1:])


@torch.inference_mode()
def test_detections_match_torchvision_ssd_eval_output(nets, images):
    ssd, net = nets
    boxes, scores = net((images - 0.5) / 0.5)
    tv = ssd(list(images))           # torchvision's own transform, head, decoding, per-class NMS
    for i, det in enumerate(tv):
        b, s, lab = _torchvision_detections(ssd, boxes[i], scores[i])
        assert len(det["boxes"]) == len(b) > 0
        torch.testing.assert_close(det["boxes"], b, atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(det["scores"], s)
        assert torch.equal(det["labels"], lab)


@torch.inference_mode()
def test_edgepack_postprocess_keeps_torchvisions_confident_detections(nets, images):
    """edgepack's NMS (best class per anchor, numpy) finds the same confident boxes torchvision's does."""
    from edgepack.tasks import postprocess

    ssd, net = nets
    if not model.WEIGHTS.is_file():
        pytest.skip("no trained weights: a random detector has no confident boxes")
    boxes, scores = net((images - 0.5) / 0.5)
    ours = postprocess.detections([boxes.numpy(), scores.numpy()], iou_threshold=ssd.nms_thresh)
    for det, tv in zip(ours, ssd(list(images)), strict=True):
        conf = tv["scores"] > 0.5
        assert conf.any()
        mine = det["scores"] > 0.5
        np.testing.assert_allclose(det["boxes"][mine], tv["boxes"][conf].numpy(), atol=1e-3)
        np.testing.assert_array_equal(det["classes"][mine] + 1, tv["labels"][conf].numpy())
