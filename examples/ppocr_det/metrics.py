"""Box-level scoring of a DBNet text map: rapidocr's own DB post-processing, then F1 at IoU >= 0.5.

The probability map (N, 1, H, W) becomes boxes exactly as rapidocr-onnxruntime 1.4.4 does it in its default
configuration (``rapidocr_onnxruntime/config.yaml``, section Det): threshold 0.3, 2x2 dilation, contours, minimum
area rectangle, box score >= 0.5 (mean probability inside), unclip ratio 1.6, boxes of side < 5 px dropped. Its
quadrilaterals become axis-aligned xyxy boxes (the rendered lines are horizontal). Predictions are matched one to
one to the labelled line boxes, greedily by IoU (best pair first), a match needing IoU >= 0.5; precision, recall
and F1 are counted over the whole set (points, 0-100).
"""

from __future__ import annotations

import numpy as np

#: rapidocr-onnxruntime 1.4.4's default DB post-processing (config.yaml, Det)
DB = {"thresh": 0.3, "box_thresh": 0.5, "max_candidates": 1000, "unclip_ratio": 1.6, "use_dilation": True,
      "score_mode": "fast"}
MATCH_IOU = 0.5


def detect_boxes(prob: np.ndarray) -> list[np.ndarray]:
    """Per sample of an (N, 1, H, W) map: (M, 4) float xyxy boxes in map pixels, by rapidocr's DBPostProcess."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

    post = DBPostProcess(**DB)
    out = []
    for p in np.asarray(prob, np.float32):
        h, w = p.shape[-2:]
        quads, _ = post(p[None].reshape(1, 1, h, w), (h, w))
        quads = np.asarray(quads, np.float64).reshape(-1, 4, 2)
        out.append(np.concatenate([quads.min(1), quads.max(1)], 1) if len(quads) else np.zeros((0, 4)))
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def matches(pred: np.ndarray, truth: np.ndarray, min_iou: float = MATCH_IOU) -> int:
    """How many predictions match a labelled box one to one (greedy, best IoU first, IoU >= min_iou)."""
    iou = iou_matrix(pred, truth)
    found = 0
    while iou.size and iou.max() >= min_iou:
        i, j = np.unravel_index(int(iou.argmax()), iou.shape)
        iou[i, :], iou[:, j] = -1, -1
        found += 1
    return found


def box_f1(preds: list[np.ndarray], truths: list[np.ndarray], min_iou: float = MATCH_IOU) -> dict:
    """Precision, recall and F1 (points) of predicted boxes against labelled boxes over a set of images."""
    tp = sum(matches(p, t, min_iou) for p, t in zip(preds, truths, strict=True))
    n_pred, n_true = sum(len(p) for p in preds), sum(len(t) for t in truths)
    precision = 100.0 * tp / n_pred if n_pred else 0.0
    recall = 100.0 * tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 2), "recall": round(recall, 2), "f1": round(f1, 2), "matched": tp,
            "predicted": n_pred, "labelled": n_true}
