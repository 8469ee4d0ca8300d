"""Classification: top-1 accuracy with labels, top-1 agreement with FP32 without, and logits SQNR."""

from __future__ import annotations

import numpy as np

from edgepack.tasks import budgets, postprocess
from edgepack.tasks.base import score_count, sqnr_db


class Classify:
    """One (N, C) logits output; class names come from --labels, the validation folders or the model."""

    name = "classify"
    budget_names = ("max_accuracy_drop", "min_agreement")
    #: the labelled metric pruning is judged by: quality keys <key>_fp32 / <key>_int8 (points), its name;
    #: its drop is what budget_names[0] limits
    headline = ("accuracy", "accuracy (%)")
    #: copied beside the bundle's run.py: a classifier may have more outputs, and run.py turns a TFLite model's
    #: 4-D ones to NCHW with postprocess.to_nchw (a logits + mask model's bundle failed on --all-outputs)
    runner_files = (postprocess.__file__,)
    #: the classes are scored each on its own (sigmoid; an HF multi-label text classifier), not one among all:
    #: the bundle's run.py then gives every class scoring 0.5 or more, and validation still judges the top class
    multi_label = False

    def check_outputs(self, shapes: list[tuple], where: str) -> int:
        """The class count; an InputError when the first output is not (N, C) scores: --task classify on an image
        output used to pass with no quality budget and no word, and run.py printed flattened pixel indices as its
        'top-5 classes'."""
        from edgepack.errors import InputError

        count = score_count(shapes[0]) if shapes else None
        if count is None and not (shapes and len(shapes[0]) == 2 and not isinstance(shapes[0][-1], int)):
            raise InputError(f"{where}: first output {list(shapes[0]) if shapes else []} is not (N, classes) scores",
                             hint="classify takes a first output of one score per class, (N, C) or (N, C, 1, 1); "
                                  "for a map use --task segment, else --task generic")
        return count if count is not None else shapes[0][-1]

    def quality(self, ref: np.ndarray, got: np.ndarray, y: np.ndarray | None) -> dict:
        """Accuracy (points, 0-100) with labels, top-1 agreement (0-1) and SQNR (dB) of INT8 vs FP32."""
        out = {"sqnr_db": round(sqnr_db(ref, got), 2), "agreement": None, "accuracy_fp32": None, "accuracy_int8": None,
               "accuracy_drop": None}
        if ref.ndim == 2:
            top_ref, top_q = ref.argmax(1), got.argmax(1)
            out["agreement"] = round(float((top_ref == top_q).mean()), 4)
            if y is not None:
                out["accuracy_fp32"] = round(100 * float((top_ref == y).mean()), 2)
                out["accuracy_int8"] = round(100 * float((top_q == y).mean()), 2)
                out["accuracy_drop"] = round(out["accuracy_fp32"] - out["accuracy_int8"], 2)
        return out

    def resampled(self, ref: np.ndarray, got: np.ndarray, y: np.ndarray | None, budget: str):
        """idx -> the accuracy drop (points) or the agreement on samples idx (see edgepack.tasks.interval)."""
        if np.ndim(ref) != 2:
            return None
        top_ref, top_q = ref.argmax(1), got.argmax(1)
        if budget == "agreement":
            same = (top_ref == top_q).astype(np.float64)
            return lambda idx: float(same[idx].mean())
        if budget == "accuracy_drop_points" and y is not None:
            diff = 100.0 * ((top_ref == y).astype(np.float64) - (top_q == y))
            return lambda idx: float(diff[idx].mean())
        return None

    def paired_correct(self, ref: np.ndarray, got: np.ndarray, y: np.ndarray | None):
        """(FP32 top-1 right, INT8 top-1 right) per sample, for the accuracy drop's paired interval; None without
        labels."""
        if y is None or np.ndim(ref) != 2:
            return None
        y = np.asarray(y)
        return ref.argmax(1) == y, got.argmax(1) == y

    def quality_budget(self, quality: dict, limits: dict) -> dict | None:
        """The accuracy budget (with labels) or the agreement budget (without); None if neither is set."""
        drop, agree = limits.get("max_accuracy_drop"), limits.get("min_agreement")
        if drop is not None and quality["accuracy_drop"] is not None:
            return budgets.row("accuracy_drop_points", quality["accuracy_drop"], drop, "<=")
        if agree is not None and quality["agreement"] is not None:
            return budgets.row("agreement", quality["agreement"], agree, ">=")
        return None
