"""Any other output (feature maps, embeddings, several heads): INT8 judged against FP32 output by output.

Without a task that knows what the numbers mean, the honest judgement is how close INT8 stays to FP32: SQNR (dB)
and cosine similarity per output tensor, the worst output deciding. A model nothing judges must not pass, so
``min_output_sqnr_db`` always applies: the profile's or command line's value, else DEFAULT_MIN_SQNR_DB.
Outputs after the first are judged by edgepack.stages.judge with the same floor.
"""

from __future__ import annotations

import numpy as np

from edgepack.tasks import postprocess
from edgepack.tasks.base import CHUNK, match_fraction, sqnr_db

#: 10 dB: the INT8 error is a third of the signal's amplitude (at 0 dB it is as large as the signal). Classifier
#: logits of the shipped examples sit at 18-22 dB; a feature map that INT8 has destroyed sits near 0 dB.
DEFAULT_MIN_SQNR_DB = 10.0


class Generic:
    """Every output compared with FP32: SQNR and cosine similarity; no labels needed."""

    name = "generic"
    budget_names = ("min_output_sqnr_db",)
    #: copied beside the bundle's run.py, which lays a TFLite model's 4-D outputs out in NCHW with its to_nchw
    runner_files = (postprocess.__file__,)

    def quality(self, ref: np.ndarray | list, got: np.ndarray | list, y: np.ndarray | None) -> dict:
        refs, gots = (ref, got) if isinstance(ref, list) else ([ref], [got])
        per = [{"sqnr_db": _r(sqnr_db(r, g, centered=True)), "cosine": round(_cosine(r, g), 5)}
               for r, g in zip(refs, gots, strict=True)]
        worst = min(p["sqnr_db"] for p in per)
        # the fraction of the first output's elements equal to FP32's: the judge of an integer output (a class
        # map, ids), which edgepack.stages.judge uses instead of SQNR when the model declares it integer
        return {"sqnr_db": worst, "agreement": None, "accuracy_fp32": None, "accuracy_int8": None,
                "accuracy_drop": None, "outputs": per, "output_match": match_fraction(refs[0], gots[0])}

    def quality_budget(self, quality: dict, limits: dict) -> dict | None:
        """None: every output, the first included, is judged by edgepack.stages.judge against
        ``min_output_sqnr_db`` (DEFAULT_MIN_SQNR_DB when unset), so a model nothing else judges cannot pass."""
        return None


def _r(v: float) -> float:
    return round(v, 2) if np.isfinite(v) else v


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two output sets, summed in float64 over blocks of CHUNK samples (as sqnr_db: a set of
    large maps is never copied whole); 1 when both are all zero, 0 when only one is."""
    dot = aa = bb = 0.0
    for i in range(0, max(len(a), 1), CHUNK):
        a64, b64 = np.asarray(a[i:i + CHUNK], np.float64).ravel(), np.asarray(b[i:i + CHUNK], np.float64).ravel()
        dot, aa, bb = dot + float(a64 @ b64), aa + float(a64 @ a64), bb + float(b64 @ b64)
    den = float(np.sqrt(aa) * np.sqrt(bb))
    return 1.0 if den == 0 and aa == 0 and bb == 0 else (dot / den if den else 0.0)
