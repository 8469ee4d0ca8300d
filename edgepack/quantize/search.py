"""Accuracy-aware INT8: when the INT8 model misses its accuracy budget, try cheaper-to-costlier fixes.

Order (run-time cost first, then search cost): learned weight rounding (edgepack.backends.rounding) and other
activation calibration methods (free at run time; the methods keep the rounding when it scored better), per-channel
weights when they were off, more calibration samples, then keeping in float the 1, 2, 4, 8 activations whose
rounding costs most at the outputs (`diagnose.costly_activations`: each one's producer and readers run in float, so
the tensor is never rounded), then the layers that inject the most error (`diagnose.layer_errors`): 1, 2, 4, 8, 16
of them (their weights unrounded; their activations are still rounded where quantized layers read or write them).
The first configuration that meets the budget wins; the search stops at
``max_seconds`` and otherwise hands over the best one it found, saying so; a trial still calibrating at the
limit stops there too (recorded as stopped). A trial that fails (a calibration method that cannot handle the
model's ranges, a converter error) is recorded with its error and the search goes on: the default INT8 model it
searches from already stands. Every trial is recorded with its quality, size, one-thread host
latency and search time.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from edgepack.errors import Interrupted, TimeLimitReached

log = logging.getLogger(__name__)
FLOAT_LAYER_STEPS = (1, 2, 4, 8, 16)
FLOAT_ACTIVATION_STEPS = (1, 2, 4, 8)
#: calibration samples (evenly spread over the set) of a histogram-method trial: binning every activation is the
#: search's costliest step (percentile on 200 EfficientNet-Lite0 samples: ~140 s of a 300 s budget)
HISTOGRAM_TRIAL_SAMPLES = 64
#: the drop (points) of each task's own metric in its quality dict (edgepack.tasks.segment, .detect)
TASK_DROPS = ("miou_drop", "map50_drop")


@dataclasses.dataclass
class Trial:
    name: str
    settings: dict
    quality: dict
    size_bytes: int
    p50_ms: float | None
    seconds: float
    met: bool
    record: dict = dataclasses.field(default_factory=dict)
    path: Path | None = None
    raw_settings: dict = dataclasses.field(default_factory=dict)
    stopped: bool = False  # stopped at the search's time limit, before it had a model to score
    failed: str | None = None  # the error that ended this trial (the search went on without it)
    over_size: bool = False  # its file is over the size budget the default recipe's file keeps

    def row(self) -> dict:
        return {"name": self.name, "settings": self.settings, **{k: self.quality.get(k) for k in
                ("accuracy_int8", "accuracy_drop", "agreement", "sqnr_db")},
                **{k: self.quality[k] for k in TASK_DROPS if k in self.quality}, "size_bytes": self.size_bytes,
                "latency_p50_ms_1thread": self.p50_ms, "seconds": round(self.seconds, 1), "met": self.met,
                **({"stopped": "time limit"} if self.stopped else {}),
                **({"over_size_budget": True} if self.over_size else {}),
                **({"failed": self.failed} if self.failed else {})}


@dataclasses.dataclass
class SearchSpace:
    """What the search may vary, from the build's settings."""

    method: str
    per_channel: bool
    more_calib: Callable[[], np.ndarray | None]  # a larger calibration set, or None if there is none
    diagnose: Callable[[Path], list[dict]]       # per-layer error rows for an INT8 model
    weight_rounding: str = "nearest"             # the build's (edgepack.backends.rounding.METHODS)
    #: for an INT8 model and its diagnosis rows: activations by cost at the outputs, costliest first, each with the
    #: nodes that keep it unrounded ({"tensor", "nodes", ...}: diagnose.costly_activations); None: not searched
    costly_activations: Callable[[Path, list[dict]], list[dict]] | None = None


def candidates(space: SearchSpace, get_best: Callable[[], Trial]) -> Iterator[tuple[str, dict]]:
    """(name, settings) in cost order. Settings are overrides of the default recipe; the float-layer
    candidates build on the best trial so far, ranked by a diagnosis of that trial's model."""
    if space.weight_rounding == "nearest":
        yield "learned weight rounding", {"weight_rounding": "gptq"}
    for method in ("percentile", "entropy"):
        if method != space.method:
            rounding = {k: v for k, v in get_best().raw_settings.items() if k == "weight_rounding"}
            yield f"{method} calibration", {**rounding, "method": method, "max_calib": HISTOGRAM_TRIAL_SAMPLES}
    if not space.per_channel:
        yield "per-channel weights", {"per_channel": True}
    if space.more_calib() is not None:  # only when the calibration source holds more samples
        yield "2x calibration samples", {"more_calib": True}
    from edgepack.quantize.diagnose import sensitive_nodes

    best = get_best()
    rows = space.diagnose(best.path)
    base = dict(best.raw_settings)
    costly = space.costly_activations(best.path, rows) if space.costly_activations else []
    for k in FLOAT_ACTIVATION_STEPS:
        if len(costly) < k:
            break
        nodes = list(dict.fromkeys(n for a in costly[:k] for n in a["nodes"]))
        yield (f"{k} costliest activation(s) unrounded", {**base, "exclude_nodes": nodes,
                                                          "unrounded": [a["tensor"] for a in costly[:k]]})
    for k in FLOAT_LAYER_STEPS:
        nodes = sensitive_nodes(rows, k)
        if len(nodes) < k:
            break
        yield f"{k} most sensitive layer(s) in float", {**base, "exclude_nodes": nodes}


def run(quantize: Callable[[dict, Path], dict], evaluate: Callable[[Path], dict], meets: Callable[[dict], bool],
        space: SearchSpace, workdir: Path, latency: Callable[[Path], float | None], max_seconds: float,
        default: Trial, max_bytes: int | None = None) -> tuple[Trial, list[Trial], float]:
    """Search from the failed ``default`` trial; return (chosen, all trials, seconds spent). ``max_bytes``: the
    size budget. When the default recipe's file keeps it, a trial whose file does not (float weights grow it) is
    marked ``over_size``, neither meets nor is chosen, and the search goes on: shipping it would trade the
    accuracy budget for the size one."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + max_seconds
    trials, best = [default], default
    # late binding on purpose: the float-layer candidates build on the best trial *so far*
    for i, (name, settings) in enumerate(candidates(space, lambda: best)):  # noqa: B023
        if time.monotonic() > deadline:
            log.info("accuracy search stopped at its time limit (%.0f s)", max_seconds)
            break
        started = time.monotonic()
        try:
            result = trial(name, settings, quantize, evaluate, meets, latency, workdir / f"trial_{i}.onnx",
                           deadline)
        except TimeLimitReached:  # a long calibration: the limit bounds a trial too, not only the search
            log.info("accuracy search: trial '%s' stopped at the time limit (%.0f s)", name, max_seconds)
            trials.append(_unscored(name, settings, started, stopped=True))
            break
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 (one candidate's failure costs that candidate, not the build)
            why = f"{type(exc).__name__}: {str(exc)[:200] or 'no message'}"
            log.warning("accuracy search: trial '%s' failed (%s); going on with the next", name, why)
            trials.append(_unscored(name, settings, started, failed=why))
            continue
        if max_bytes is not None and default.size_bytes <= max_bytes < result.size_bytes:
            result.met, result.over_size = False, True
            log.info("accuracy search: '%s' is over the size budget (%d > %d bytes)", name, result.size_bytes,
                     max_bytes)
        trials.append(result)
        if _score(result) > _score(best) or result.met:
            best = result
        if result.met:
            break
    return best, trials, time.perf_counter() - t0


def _unscored(name: str, settings: dict, started: float, **why) -> Trial:
    """A trial that ended without a model to score: ``stopped=True`` (the time limit) or ``failed="<error>"``."""
    return Trial(name=name, settings=_shown(settings, {}), quality={}, size_bytes=0, p50_ms=None,
                 seconds=time.monotonic() - started, met=False, raw_settings=dict(settings), **why)


def trial(name, settings, quantize, evaluate, meets, latency, path: Path, deadline: float | None = None) -> Trial:
    """Quantize with ``settings`` (overrides of the default recipe) and score the result; ``quantize`` may raise
    TimeLimitReached past ``deadline`` (time.monotonic())."""
    t0 = time.perf_counter()
    record = quantize(settings, path, deadline)
    quality = evaluate(path)
    return Trial(name=name, settings=_shown(settings, record), quality=quality, size_bytes=path.stat().st_size,
                 p50_ms=latency(path), seconds=time.perf_counter() - t0, met=meets(quality), record=record,
                 path=path, raw_settings=dict(settings))


def _shown(settings: dict, record: dict) -> dict:
    """The settings as the report shows them: the sample count instead of the "more_calib"/"max_calib" switches."""
    resized = settings.get("more_calib") or settings.get("max_calib")
    more = {"calibration_samples": record.get("calibration_samples", settings.get("max_calib"))} if resized else {}
    return {k: v for k, v in settings.items() if k not in ("more_calib", "max_calib")} | more


def _score(trial: Trial) -> float:
    """Higher is better: minus the task metric's drop in points (top-1 accuracy, mIoU, mAP@0.5), else top-1
    agreement, else (generic outputs) the SQNR against FP32, dB; a trial stopped at the time limit, failed, or over
    the size budget has no score."""
    if trial.stopped or trial.failed or trial.over_size:
        return float("-inf")
    q = trial.quality
    drop = next((q[k] for k in ("accuracy_drop", *TASK_DROPS) if q.get(k) is not None), None)
    if drop is not None:
        return -drop
    if q.get("agreement") is not None:
        return q["agreement"]
    return q["sqnr_db"] if q.get("sqnr_db") is not None else 0.0


def adopt(trial: Trial, final: Path) -> None:
    """Make the chosen trial's model the INT8 artifact."""
    if trial.path is not None and trial.path != final:
        shutil.copyfile(trial.path, final)
