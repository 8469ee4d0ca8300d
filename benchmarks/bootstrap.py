"""Paired bootstrap intervals for the task benchmarks: how much of a difference between two INT8 models is the
scored images' luck.

Every model of a table is scored on the same images, so the resamples are paired: one resample of image indices
(with replacement, seeded) is scored for FP32 and every INT8 model, and a drop, or a difference between two tools,
is taken within that resample. The interval is the 2.5-97.5 percentile of those values. The per-resample values
come from the task's own ``resampled`` (edgepack.tasks.interval: the one edgepack's builds use for their quality
budget's interval): FP32's metric minus INT8's on images idx, so tool a's metric minus tool b's on the same
resample is b's drop minus a's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SEED = 0


def intervals(drops: dict[str, Callable[[np.ndarray], float]], count: int, resamples: int,
              pairs: list[tuple[str, str]], seed: int = SEED) -> dict:
    """Paired percentile bootstrap over ``count`` images.

    ``drops``: {tool: f}, f(idx) -> FP32's metric minus the tool's INT8 metric (points) on images idx.
    Returns {"drop": {tool: (lo, hi)}}, and {"diff": {(a, b): (lo, hi, share)}} for tool a's metric minus tool
    b's (share: the fraction of resamples where a scored lower than b).
    """
    rng = np.random.default_rng(seed)
    values = {name: [] for name in drops}
    for _ in range(resamples):
        idx = rng.integers(0, count, count)
        for name, f in drops.items():
            values[name].append(f(idx))
    arr = {name: np.asarray(v) for name, v in values.items()}

    def band(v: np.ndarray) -> tuple[float, float]:
        lo, hi = np.percentile(v, [2.5, 97.5])
        return round(float(lo), 2), round(float(hi), 2)

    diff = {(a, b): (*band(arr[b] - arr[a]), round(float(np.mean(arr[a] > arr[b])), 3)) for a, b in pairs}
    return {"drop": {name: band(v) for name, v in arr.items()}, "diff": diff, "resamples": resamples,
            "images": count, "seed": seed}
