"""How sure a quality verdict is: the 95 % interval of the value the quality budget judges.

A 1-point budget on an accuracy or mAP drop measured on 200 validation samples is judged on a figure whose own
sampling error is about as large as the budget (the SSDLite shapes detector: mAP@0.5 drop 0.05 on its 200
validation scenes, 1.13 on 1,000 others of the same distribution). The validate stage therefore attaches to the
quality budget row the 95 % interval of its value over resamples of the validation samples, and warns when the
interval crosses the limit: that validation set cannot settle the budget, more samples can.

A top-1 agreement is a proportion and gets Wilson's score interval (a bootstrap collapses to a point when every
sample agrees, which 8 samples on an emulated device often do). An accuracy drop with labels is a difference of
two proportions on the same samples and gets Newcombe's paired score interval (his method 10; a bootstrap printed
"0.00 to 0.00" for 30 texts on which INT8 changed no prediction, though 30 samples cannot rule out a drop of about
11 points). Every other value gets a paired percentile
bootstrap: each resample draws len(samples) sample indices with replacement (seeded, so the
interval is reproducible) and recomputes FP32's and INT8's metric on the same draw, so their difference keeps
what both share. Metrics that are not means over samples (mIoU sums confusion matrices, mAP ranks every
detection of the set) are recomputed per resample from per-sample pieces by the task's ``resampled``.
"""

from __future__ import annotations

import time

import numpy as np

LEVEL = 0.95
SEED = 0
RESAMPLES = 1000
#: a detector's resample runs pycocotools' accumulate twice (about 10-20 ms each for a few hundred images)
RESAMPLES_BY_TASK = {"detect": 200}
TIME_LIMIT_S = 60.0   # a very large validation set stops resampling early (the interval says how many it took)


def budget_interval(task, ref, got, y, row: dict | None, samples: int) -> dict | None:
    """{"low", "high", "level", "resamples", "samples", "crosses_limit"} for the budget ``row`` (as
    edgepack.tasks.budgets.row builds it), or None when the task cannot resample that budget's value."""
    resampled = getattr(task, "resampled", None)
    if row is None or resampled is None or samples < 2:
        return None
    value = resampled(ref, got, y, row["name"])
    if value is None:
        return None
    if row["name"] == "agreement":   # a proportion: Wilson's interval (the bootstrap collapses when all agree)
        low, high = wilson(value(np.arange(samples)), samples)
        return _result(row, low, high, 0, samples, "wilson")
    paired = getattr(task, "paired_correct", None)
    pair = paired(ref, got, y) if paired is not None and row["name"] == "accuracy_drop_points" else None
    if pair is not None:   # a difference of two proportions on the same samples
        low, high = newcombe_paired(*pair)
        return _result(row, 100 * low, 100 * high, 0, samples, "newcombe paired score")
    rng = np.random.default_rng(SEED)
    wanted = RESAMPLES_BY_TASK.get(getattr(task, "name", ""), RESAMPLES)
    values, start = [], time.monotonic()
    while len(values) < wanted and (len(values) < 50 or time.monotonic() - start < TIME_LIMIT_S):
        values.append(value(rng.integers(0, samples, samples)))
    low, high = np.percentile(values, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return _result(row, low, high, len(values), samples, "paired bootstrap")


def wilson(share: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``share`` observed on ``n`` samples (8 of 8: 0.68 to 1)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired(first: np.ndarray, second: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` interval of ``mean(first) - mean(second)`` for paired binary outcomes (FP32 correct, INT8
    correct on the same samples): Newcombe (1998), "Improved confidence intervals for the difference between
    binomial proportions based on paired data", method 10 (Wilson intervals of both proportions, combined with
    their correlation phi, continuity-corrected as he gives it). With no sample changed it is not a point: on 30
    samples all right in both, -0.114 to 0.114."""
    first, second = np.asarray(first, bool), np.asarray(second, bool)
    n = first.size
    a, b = int(np.sum(first & second)), int(np.sum(first & ~second))
    c, d = int(np.sum(~first & second)), int(np.sum(~first & ~second))
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = wilson(p1, n, level), wilson(p2, n, level)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        phi = 0.0
    else:
        cross = a * d - b * c
        cross = max(cross - n / 2, 0.0) if cross > 0 else cross
        phi = cross / np.sqrt(float(margins))
    delta = p1 - p2
    low = delta - np.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    high = delta + np.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return max(-1.0, float(low)), min(1.0, float(high))


def _result(row: dict, low: float, high: float, resamples: int, samples: int, method: str) -> dict:
    digits = 4 if row["name"] == "agreement" else 2
    low, high = round(float(low), digits), round(float(high), digits)
    limit = row["limit"]
    crosses = (low <= limit < high) if row["op"] == "<=" else (low < limit <= high)
    return {"low": low, "high": high, "level": LEVEL, "method": method,
            "resamples": resamples, "samples": samples, "seed": SEED, "crosses_limit": bool(crosses)}
