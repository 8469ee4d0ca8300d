"""The task contract: quality metrics of INT8 against FP32, the budget that judges them, and what the bundle
records for the runner."""

from __future__ import annotations

from typing import Protocol

import numpy as np

CHUNK = 16  #: samples per block when a metric walks a validation set (bounded temporaries)
SQNR_CAP_DB = 999.0  #: identical outputs (no noise) are reported as 999 dB: JSON (the manifest) has no infinity


def score_count(shape: tuple) -> int | None:
    """C of class scores (N, C) or (N, C, 1, 1); None for any other shape. A (N, C, 1, 1) classifier was built as a
    generic model: its labelled --val and --labels were dropped without a word, and --task classify refused it."""
    dims = tuple(shape)
    if len(dims) == 4 and dims[2:] == (1, 1):
        dims = dims[:2]
    return dims[1] if len(dims) == 2 and isinstance(dims[1], int) and dims[1] > 1 else None


class Task(Protocol):
    """What a stage needs to know about a model's outputs.

    ``quality`` compares FP32 and INT8 outputs on the validation set (with labels when there are any: the
    dataset's ``truth``, class labels or per-sample targets); ``quality_budget`` judges that dict against the
    resolved budgets (command line over profile) and returns a budget row (edgepack.tasks.budgets.row) or None
    when no budget of this task is set.

    Optional, for tasks that need them (see tasks/segment.py, tasks/detect.py): ``all_outputs = True`` (the
    stages pass ``quality`` a list of every output instead of the first), ``check_outputs(shapes, where)``
    (refuse a model whose outputs do not fit, before any slow stage), ``read_targets(dataset, labels, ...)``
    (per-sample targets from --labels-dir), ``runner_files`` (files copied beside the bundle's run.py),
    ``headline`` ((quality key, name): the labelled metric pruning is judged by, limited by ``budget_names[0]``) and
    ``resampled(ref, got, y, budget)``: idx -> the value of the budget row named ``budget`` on the samples ``idx``
    (repeats count again), or None; edgepack.tasks.interval bootstraps it to say how sure a quality verdict is.
    """

    name: str
    budget_names: tuple[str, ...]

    def quality(self, ref: np.ndarray, got: np.ndarray, y: np.ndarray | None) -> dict: ...

    def quality_budget(self, quality: dict, limits: dict) -> dict | None: ...


def sqnr_db(ref: np.ndarray, got: np.ndarray, centered: bool = False) -> float:
    """Signal-to-quantization-noise ratio of ``got`` against ``ref``, dB, finite: +-SQNR_CAP_DB when identical or
    when the reference is all zero (a random-weight model can give INT8 outputs equal to FP32's). Summed over
    blocks of CHUNK samples in float64: a set of large maps is never copied whole.

    ``centered``: the signal is the reference's variation around its mean, not its raw power. An output with a
    large constant offset (a depth head in millimetres: 1000 + 5 x) scored 106 dB raw against 36-38 dB on the part
    that varies; a judge of arbitrary outputs must not be fooled by the offset."""
    signal = noise = total = 0.0
    count = 0
    for i in range(0, max(len(ref), 1), CHUNK):
        r, g = np.asarray(ref[i:i + CHUNK], np.float64), np.asarray(got[i:i + CHUNK], np.float64)
        noise += float(np.sum((r - g) ** 2))
        signal += float(np.sum(r ** 2))
        total += float(np.sum(r))
        count += r.size
    if not (np.isfinite(noise) and np.isfinite(signal)):  # an inf or nan in either model's outputs
        return -SQNR_CAP_DB
    if centered and count:
        signal = max(signal - total * total / count, 0.0)
    if noise == 0:
        return SQNR_CAP_DB
    if signal == 0 or not np.isfinite(noise):
        return -SQNR_CAP_DB
    return max(-SQNR_CAP_DB, min(SQNR_CAP_DB, 10 * float(np.log10(signal / noise))))


def match_fraction(ref: np.ndarray, got: np.ndarray) -> float:
    """The fraction of elements of ``got`` equal to ``ref``: the judge of an integer output (a class map, ids, a
    count), read back as float32 (edgepack.stages.judge); 1 for empty outputs."""
    ref, got = np.asarray(ref), np.asarray(got)
    return round(float(np.mean(np.rint(ref) == np.rint(got))), 4) if ref.size else 1.0
