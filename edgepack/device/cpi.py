"""Device latency from the device's own work: ms = instructions per inference x CPI / clock.

The instructions are counted on the emulated device (edgepack.device.run_emulated) with the profile's runtime and
kernels for its CPU model. CPI (cycles per instruction) is the one unknown; it is fitted per device and precision
on the profile's published [[reference]] latencies, by running those reference networks (random weights, built
here as edgepack.device.references builds them, in the profile's first format) in the same emulated device:
CPI_ref = published ms x clock GHz x 1e6 / instructions. The fitted CPI is the geometric mean over the references
(least squares on log error); it absorbs whatever the references differ in from one emulated thread: the device's
threads, memory stalls, and the runtime that was measured (ncnn for the shipped profiles). The error band is the
leave-one-out band, each reference predicted by a CPI fitted without its architecture family
(edgepack.device.estimate.family), as in the operator-count estimator.

Counts of the references are cached per prepared device in ``<device>/reference_insns.json``; ``edgepack device
prepare`` fills it, so builds only read it. The counts are deterministic for a CPU model, runtime wheels and
reference builder, so the ones measured for the shipped profiles are also shipped (``reference_insns.json`` beside
this module, keyed by ``shipped_key``) and used when the device has none: preparing a device then takes a minute,
not the half hour of building and emulating some twenty reference networks (``edgepack device prepare --recount``
measures them again).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgepack.device.emulation import Device
from edgepack.device.estimate import family
from edgepack.device.run_emulated import Job, RunOptions, run
from edgepack.errors import EdgepackError, InputError
from edgepack.targets import Reference, TargetProfile
from edgepack.util import ProgressFn, no_progress, write_bytes_atomic

log = logging.getLogger(__name__)

KIND = "estimated-device (emulated)"
COUNTS_FILE = "reference_insns.json"
SHIPPED = Path(__file__).resolve().parent / COUNTS_FILE


def shipped_key(device: Device) -> str:
    em = device.emulation
    return f"{em.qemu_cpu}|{em.release}|" + "+".join(sorted(em.wheels))


def shipped_counts(device: Device) -> dict[str, dict | None]:
    try:
        return json.loads(SHIPPED.read_text()).get(shipped_key(device), {})
    except (OSError, json.JSONDecodeError):
        return {}


def _rid(r: Reference, fmt: str) -> str:
    return f"{fmt}:{r.model}@{r.input_size}:{r.precision}"


def cached_counts(device: Device) -> dict[str, dict | None]:
    try:
        return json.loads((device.root / COUNTS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def reference_counts(profile: TargetProfile, device: Device, *, fmt: str | None = None, count_missing: bool = True,
                     processes: int = 2, recount: bool = False,
                     progress: ProgressFn = no_progress) -> dict[str, dict | None]:
    """Instructions per inference (by class) of every reference of the profile on ``device``, keyed by
    ``fmt:model@size:precision``; None for a reference that cannot be built or run in ``fmt``.

    Missing ones are built on the host and run on the emulated device when ``count_missing`` (minutes per
    target; ``edgepack device prepare`` does it once), else left out. ``recount``: measure every one again."""
    fmt = fmt or profile.formats[0]
    known = {} if recount else {**shipped_counts(device), **cached_counts(device)}
    missing = [r for r in profile.reference if _rid(r, fmt) not in known]
    if missing and count_missing:
        for size in sorted({r.input_size for r in missing}):
            group = [r for r in missing if r.input_size == size]
            progress(f"counting instructions of {len(group)} reference model(s) on the emulated "
                     f"{profile.name} ({size}px)", 0, 1)
            known.update(_count_group(group, size, fmt, device, processes))
            write_bytes_atomic(device.root / COUNTS_FILE, (json.dumps(known, indent=1, sort_keys=True)
                                                           + "\n").encode())
    return {_rid(r, fmt): known[_rid(r, fmt)] for r in profile.reference if _rid(r, fmt) in known}


def _count_group(refs: list[Reference], size: int, fmt: str, device: Device, processes: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="edgepack-cpi-"))
    try:
        jobs, out = [], {}
        for r in refs:
            try:
                jobs.append(Job(_rid(r, fmt).replace(":", "_").replace("@", "_"), fmt,
                                _build(r.model, size, fmt, r.precision, work / r.model)))
            except Exception as exc:  # a converter's failure (any type, from a child) costs only that reference
                log.warning("reference %s cannot be built as %s: %s", _rid(r, fmt), fmt, exc)
                out[_rid(r, fmt)] = None
        feed = {"input": np.random.default_rng(1).normal(0, 1, (1, 3, size, size)).astype(np.float32)}
        built = [(job, r) for job, r in zip(jobs, [r for r in refs if _rid(r, fmt) not in out], strict=True)]

        def one(item):  # each reference alone, so that a runtime failure costs only that reference
            job, r = item
            try:
                return _rid(r, fmt), run(device, [job], feed, work / "run", RunOptions(processes=1))[job.name].insns
            except EdgepackError as exc:
                log.warning("reference %s cannot run on the emulated device: %s", _rid(r, fmt), exc)
                return _rid(r, fmt), None

        with ThreadPoolExecutor(max_workers=processes) as pool:
            out.update(dict(pool.map(one, built)))
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(model: str, size: int, fmt: str, precision: str, workdir: Path) -> Path:
    """edgepack.device.references.build_reference in a child process (a converter may abort the whole process)."""
    from edgepack import isolate
    from edgepack.device.references import build_reference

    return isolate.call(build_reference, model, size, fmt, precision, workdir, key="reference",
                        step=f"building reference model {model} ({fmt} {precision})")


# ---------------------------------------------------------------- the fit and its leave-one-out band

def _rows(profile: TargetProfile, counts: dict, fmt: str) -> list[dict]:
    rows = []
    for r in profile.reference:
        c = counts.get(_rid(r, fmt))
        if c and c.get("total"):
            cpi = r.latency_ms * profile.clock_ghz * 1e6 / c["total"]
            rows.append({"model": r.model, "input_size": r.input_size, "precision": r.precision,
                         "published_ms": r.latency_ms, "insns": c["total"], "cpi": cpi})
    return rows


def fit_cpi(rows: list[dict], precision: str) -> float:
    """Geometric-mean CPI over the rows of ``precision`` (all rows when fewer than 2 of it)."""
    mine = [r for r in rows if r["precision"] == precision]
    use = mine if len(mine) >= 2 else rows
    if not use:
        raise InputError("no reference instruction counts to fit a CPI on",
                         hint="run `edgepack device prepare TARGET` (it counts the references once)")
    return float(math.exp(np.mean([math.log(r["cpi"]) for r in use])))


def leave_one_out(profile: TargetProfile, counts: dict, fmt: str | None = None) -> list[dict]:
    """Each reference predicted with a CPI fitted without its architecture family; error = predicted/published-1."""
    fmt = fmt or profile.formats[0]
    rows = _rows(profile, counts, fmt)
    out = []
    for r in rows:
        train = [t for t in rows if family(t["model"]) != family(r["model"])]
        predicted = r["insns"] * fit_cpi(train, r["precision"]) / (profile.clock_ghz * 1e6)
        out.append({**{k: r[k] for k in ("model", "input_size", "precision", "published_ms", "insns")},
                    "cpi": round(r["cpi"], 4), "predicted_ms": round(predicted, 3),
                    "error": round(predicted / r["published_ms"] - 1, 4)})
    return out


def band(loo: list[dict], precision: str) -> tuple[float, float]:
    """(low, high) multipliers of a point estimate from the leave-one-out errors of ``precision``."""
    errors = [r["error"] for r in loo if r["precision"] == precision]
    if not errors:
        return (float("nan"), float("nan"))
    return (round(1 / (1 + max(errors)), 4), round(1 / (1 + min(errors)), 4))


def estimate(insns: int, precision: str, profile: TargetProfile, counts: dict, fmt: str | None = None) -> dict:
    """Device p50 estimate (ms) for a model executing ``insns`` instructions per inference, with its band."""
    fmt = fmt or profile.formats[0]
    rows = _rows(profile, counts, fmt)
    cpi = fit_cpi(rows, precision)
    loo = leave_one_out(profile, counts, fmt)
    low, high = band(loo, precision)
    p50 = insns * cpi / (profile.clock_ghz * 1e6)
    n = sum(1 for r in loo if r["precision"] == precision)
    return {"kind": KIND, "p50": round(p50, 3), "band": [round(p50 * low, 3), round(p50 * high, 3)],
            "instructions": int(insns), "cpi": round(cpi, 4), "clock_ghz": profile.clock_ghz,
            "band_source": f"leave-one-out over {n} published {precision.upper()} references counted on the "
                           "emulated device",
            "max_abs_error": max((abs(r["error"]) for r in loo if r["precision"] == precision), default=None)}


def format_table(rows: list[dict]) -> str:
    """Plain-text leave-one-out table of the emulated-work model."""
    lines = [f"{'model':<24}{'prec':<6}{'Minsn':>9}{'CPI':>8}{'published':>11}{'predicted':>11}{'error':>9}"]
    for r in rows:
        lines.append(f"{r['model'] + '@' + str(r['input_size']):<24}{r['precision']:<6}{r['insns'] / 1e6:>9.1f}"
                     f"{r['cpi']:>8.3f}{r['published_ms']:>11.2f}{r['predicted_ms']:>11.2f}{r['error']:>+9.1%}")
    errors = [abs(r["error"]) for r in rows]
    if errors:
        lines.append(f"max |error| {max(errors):.1%} over {len(errors)} references")
    return "\n".join(lines)
