"""Segmentation: per-pixel class masks, judged by mIoU and pixel accuracy of INT8 (and FP32) against labels.

The model's first output is (N, C, H, W) class scores (the mask is the argmax over C) or an (N, 1, H, W)
probability map (the mask is ``p >= threshold``: two classes, background and foreground; the threshold is
PROB_THRESHOLD unless the build sets ``prob_threshold``: DBNet text detectors binarise their map at 0.3, and
scoring them at 0.5 would judge a mask the model's own post-processing never uses). With PNG index
masks (``--labels-dir``) both models are scored against them and the drop FP32 -> INT8 is in points; without
labels INT8 is scored against the FP32 model's own masks as pseudo-labels (FP32 then scores 100 by definition),
which generalises the classifier's top-1 agreement.

The metrics are the standard confusion-matrix ones (as in torchvision's segmentation references and
torchmetrics' MulticlassJaccardIndex, which tests/test_tasks.py checks them against): one C x C confusion matrix
over every labelled pixel of the set (np.bincount), IoU_c = TP / (TP + FP + FN), mIoU the mean over the classes
that occur in labels or predictions, pixel accuracy = correct / labelled pixels. Pixels labelled IGNORE_INDEX
(255, the VOC convention for borders and "void") are not counted.
"""

from __future__ import annotations

import numpy as np

from edgepack.errors import InputError
from edgepack.tasks import budgets, postprocess
from edgepack.tasks.base import CHUNK, sqnr_db

PROB_THRESHOLD = postprocess.PROB_THRESHOLD
IGNORE_INDEX = 255


class Segment:
    """One (N, C, H, W) score output or (N, 1, H, W) probability map; labels are PNG index masks."""

    name = "segment"
    budget_names = ("max_miou_drop",)
    #: the labelled metric pruning is judged by: quality keys <key>_fp32 / <key>_int8 (points), its name;
    #: its drop is what budget_names[0] limits
    headline = ("miou", "mIoU (%)")
    runner_files = (postprocess.__file__,)   # copied beside the bundle's run.py

    def __init__(self, threshold: float = PROB_THRESHOLD):
        self.threshold = float(threshold)

    @classmethod
    def from_config(cls, config) -> Segment:
        """The task with the build's ``prob_threshold``."""
        return cls(threshold=config.prob_threshold)

    def num_classes(self, shape: tuple) -> int:
        """Classes of an output shaped ``shape`` (a one-channel probability map has two)."""
        return max(2, int(shape[1])) if len(shape) == 4 and isinstance(shape[1], int) else 2

    def check_outputs(self, shapes: list[tuple], where: str) -> int:
        """The class count; an InputError when the first output is not (N, C, H, W) or (N, H, W)."""
        if not shapes or len(shapes[0]) not in (3, 4):
            raise InputError(f"{where}: first output {list(shapes[0]) if shapes else []} is not a segmentation map",
                             hint="segment takes (N, C, H, W) class scores or an (N, 1, H, W) probability map; "
                                  "else use --task generic")
        return self.num_classes(shapes[0])

    def masks(self, out: np.ndarray) -> np.ndarray:
        """(N, H, W) int64 class masks from (N, C, H, W) scores or an (N, 1, H, W) probability map."""
        return postprocess.masks(out, self.threshold)

    def quality(self, ref: np.ndarray, got: np.ndarray, y) -> dict:
        """mIoU and pixel accuracy (points, 0-100) of FP32 and INT8; drop in points; SQNR of the scores (dB).

        ``y``: a list of (H, W) label masks (resized to the output's size by nearest neighbour when they differ),
        or None (then the FP32 masks are the labels).
        """
        if isinstance(ref, list):  # several outputs: the first is the segmentation map
            ref, got = ref[0], got[0]
        classes = self.num_classes(np.shape(ref))
        labelled = isinstance(y, list | tuple) and len(y) == len(ref)
        fp32 = int8 = agree = np.zeros((classes, classes), np.int64)
        for i in range(0, len(ref), CHUNK):  # masks of a few samples at a time: large sets stay in bounds
            m_ref, m_got = self.masks(ref[i:i + CHUNK]), self.masks(got[i:i + CHUNK])
            truth = np.stack([fit_mask(t, m_ref.shape[1:]) for t in y[i:i + CHUNK]]) if labelled else m_ref
            fp32 = fp32 + confusion(truth, m_ref, classes)
            int8 = int8 + confusion(truth, m_got, classes)
            agree = agree + confusion(m_ref, m_got, classes)
        out = {"sqnr_db": _round(sqnr_db(ref, got)), "agreement": round(pixel_accuracy(agree) / 100, 4),
               "accuracy_fp32": None, "accuracy_int8": None, "accuracy_drop": None,
               "labels": "masks" if labelled else "fp32 pseudo-labels", "classes": classes,
               "prob_threshold": self.threshold if np.shape(ref)[1:2] == (1,) else None,
               "miou_fp32": round(miou(fp32), 2), "miou_int8": round(miou(int8), 2),
               "pixel_accuracy_fp32": round(pixel_accuracy(fp32), 2),
               "pixel_accuracy_int8": round(pixel_accuracy(int8), 2),
               "iou_int8": [round(v, 2) if np.isfinite(v) else None for v in class_iou(int8)]}
        out["miou_drop"] = round(out["miou_fp32"] - out["miou_int8"], 2)
        out["pixel_accuracy_drop"] = round(out["pixel_accuracy_fp32"] - out["pixel_accuracy_int8"], 2)
        return out

    def resampled(self, ref, got, y, budget: str):
        """idx -> the mIoU drop (points) on samples idx, from one confusion matrix per sample (mIoU is not a mean
        over samples: each resample sums its samples' matrices; see edgepack.tasks.interval)."""
        if budget != "miou_drop_points":
            return None
        if isinstance(ref, list):
            ref, got = ref[0], got[0]
        classes = self.num_classes(np.shape(ref))
        labelled = isinstance(y, list | tuple) and len(y) == len(ref)
        per = np.zeros((2, len(ref), classes, classes), np.int64)
        for i in range(len(ref)):
            m_ref, m_got = self.masks(ref[i:i + 1])[0], self.masks(got[i:i + 1])[0]
            truth = fit_mask(y[i], m_ref.shape) if labelled else m_ref
            per[0, i], per[1, i] = confusion(truth, m_ref, classes), confusion(truth, m_got, classes)
        return lambda idx: miou(per[0, idx].sum(0)) - miou(per[1, idx].sum(0))

    def quality_budget(self, quality: dict, limits: dict) -> dict | None:
        """max_miou_drop (points) when set; None otherwise (the SQNR floor then judges the output)."""
        limit = limits.get("max_miou_drop")
        if limit is None or quality.get("miou_drop") is None:
            return None
        return budgets.row("miou_drop_points", quality["miou_drop"], limit, "<=")

    def class_count(self, output_shapes: list) -> int:
        """How many classes the model tells apart (its class names must number as many)."""
        return self.num_classes(output_shapes[0])

    def read_targets(self, dataset, labels: str, *, input_shape: tuple, preprocess, output_shapes: list,
                     class_names: list[str] | None = None) -> list:
        """PNG index masks for every image of ``dataset`` from the folder ``labels`` (see inputs.labels)."""
        from edgepack.inputs import labels as labels_mod

        return labels_mod.read_masks(dataset, labels, input_shape=input_shape, preprocess=preprocess,
                                     num_classes=self.num_classes(output_shapes[0]))


def confusion(truth: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """C x C confusion matrix (rows: truth, columns: prediction) over pixels whose label is not IGNORE_INDEX."""
    t, p = np.asarray(truth, np.int64).ravel(), np.asarray(pred, np.int64).ravel()
    keep = (t != IGNORE_INDEX) & (t >= 0) & (t < classes)
    return np.bincount(classes * t[keep] + p[keep], minlength=classes * classes).reshape(classes, classes)


def class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for a class absent from both labels and predictions."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 100 * tp / union, np.nan)


def miou(cm: np.ndarray) -> float:
    """Mean IoU (points) over the classes present in labels or predictions (100 when nothing is labelled)."""
    iou = class_iou(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else 100.0


def pixel_accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return 100.0 * float(np.trace(cm)) / float(total) if total else 100.0


def fit_mask(mask: np.ndarray, size: tuple) -> np.ndarray:
    """``mask`` resized to ``size`` (H, W) by nearest neighbour (pixel centres), unchanged when it fits."""
    mask = np.asarray(mask)
    h, w = int(size[0]), int(size[1])
    if mask.shape == (h, w):
        return mask
    rows = np.minimum(((np.arange(h) + 0.5) * mask.shape[0] / h).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * mask.shape[1] / w).astype(np.int64), mask.shape[1] - 1)
    return mask[rows][:, cols]


def _round(v: float) -> float:
    return round(v, 2) if np.isfinite(v) else v
