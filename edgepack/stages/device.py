"""Device stage: the shipped INT8 model and its FP32 model run on the emulated device, with the device's kernels.

For a profile with ``emulate = true`` (the ARM profiles), after validate: a seeded subset of the validation
samples (``emulation_samples``) runs through the bundle's own run.py (``--batch``, fed as the input kind feeds the
runner) inside qemu-user emulating the profile's CPU model with the device's own runtime wheels
(edgepack.device). Recorded per format, in the validation record under ``device``:

- agreement of the device's outputs with the host's, INT8 and FP32 (top-1 and max |difference|): ONNX Runtime
  builds a different graph per ISA, so host INT8 outputs are not the device's;
- the task's quality metric on the device's kernels (ctx.task.quality), beside the host's on the same subset;
- instructions per inference, FP32 and INT8, by class (dot-product, SVE, ...), from the counting plugin;
- estimated device ms = instructions x CPI / clock (edgepack.device.cpi), labelled ``estimated-device
  (emulated)`` with its leave-one-out band; the operator-count estimate (edgepack.device.estimate, kind
  ``estimated-device``) is used instead when its leave-one-out error on the profile's references is smaller (the
  other is kept under ``alternatives``).

Verdicts: with ``latency_budget_kind = "emulated"`` the latency budget judges the device estimate: pass when the
whole band is within the budget, fail when the whole band is over it, and inconclusive (not a failure, with a
warning to measure with ``edgepack bench``) when the band straddles it. When the device's INT8 top-1 differs from
the host's on the subset, the quality budget judges the device's figure on that subset.

How long: the profile's ``emulation_max_seconds`` bounds the stage. The host's one-thread latency (validate)
predicts the emulated time (`predicted_seconds`); a heavier model runs fewer samples, at least 2 per precision, and
when even those would take over 3x the budget (a ViT-B/16: about 30 min) the stage is skipped with a warning unless
``--emulate`` asks for it. The sample count and the prediction are recorded.

When it runs: ``--emulate`` (config ``emulate = true``) requires it, and a device that is not prepared is an error
before any slow stage (``check``); ``--no-emulate`` turns it off; left unset, it runs for profiles with
``emulate = true`` unless $EDGEPACK_EMULATE is 0, and a device that is not prepared only warns (how to prepare it)
while the host measurements judge, as without the stage.
"""

from __future__ import annotations

import math

import numpy as np

from edgepack import backends
from edgepack.config import BuildConfig
from edgepack.device import cpi, emulation, run_emulated
from edgepack.errors import EdgepackError
from edgepack.inputs.data import sample_indices
from edgepack.stages.context import BuildContext
from edgepack.stages.validate import quality_budget
from edgepack.targets import TargetProfile
from edgepack.tasks import budgets
from edgepack.tasks.interval import budget_interval
from edgepack.util import host_cores

PRECISIONS = ("fp32", "int8")
#: emulated seconds (qemu-user with the counting plugin) per host one-thread second of inference, and seconds to
#: start one guest process (Python, numpy, the runtime); fitted to 12 builds of 8 torchvision classifiers on this
#: 2-core host (300-430x for ONNX, up to ~600x for TFLite with its startup): for planning, not for reporting
EMULATION_SLOWDOWN = 450.0
GUEST_STARTUP_S = 8.0
MIN_EMULATION_SAMPLES = 2
SKIP_FACTOR = 3.0


def wanted(config: BuildConfig, target: TargetProfile) -> bool:
    """Whether the stage runs: as --emulate / --no-emulate say, else the profile's ``emulate`` unless
    $EDGEPACK_EMULATE=0."""
    return emulation.stage_runs(config.emulate, target.emulate)


def check(config: BuildConfig, target: TargetProfile) -> None:
    """Before any slow stage: an explicit --emulate needs the profile's emulated device, prepared (else an
    InputError, exit 2, whose hint is the command that prepares it)."""
    if config.emulate:
        emulation.find(target)


def run(ctx: BuildContext) -> dict | None:
    """Run the device stage when it is wanted; returns the per-format records (None when it did not run)."""
    if not wanted(ctx.config, ctx.target):
        if ctx.target.emulate:
            why = "--no-emulate" if ctx.config.emulate is False else f"{emulation.SWITCH}=0"
            ctx.records["device"] = {"skipped": why}
        return None
    try:
        device = emulation.find(ctx.target)
    except emulation.NotPrepared as exc:
        if ctx.config.emulate:
            raise
        _skip(ctx, exc)
        return None
    plans = {fmt: plan_samples(ctx.target, _host_seconds(ctx, fmt), host_cores(), bool(ctx.config.emulate))
             for fmt in ctx.target.formats}
    if any(plan is None for plan in plans.values()):
        _too_slow(ctx, plans)
        return None
    out = {fmt: _run_format(ctx, device, fmt, plans[fmt]) for fmt in ctx.target.formats}
    ctx.records["device"] = {"device": device.root.name, "qemu_cpu": device.emulation.qemu_cpu,
                             "samples": out[ctx.target.formats[0]]["samples"]}
    return out


def _skip(ctx: BuildContext, exc: emulation.NotPrepared) -> None:
    """The default asked for the stage but the device is not prepared: warn how to prepare it; the host judges."""
    ctx.records["device"] = {"skipped": exc.message}
    judge = ("; the latency budget is judged on the host measurement (measured-host), not the device"
             if ctx.target.latency_budget_kind == "emulated" else "")
    hint = exc.hint or ""
    ctx.warn(f"device stage skipped: {exc.message}{judge}. {hint[:1].upper()}{hint[1:]}")


def _host_seconds(ctx: BuildContext, fmt: str) -> float | None:
    """One FP32 plus one INT8 inference at one thread on this host, s (validate's measurement), or None."""
    one = ctx.records.get("validation", {}).get(fmt, {}).get("latency_ms", {}).get("one_thread") or {}
    ms = [one.get(p, {}).get("p50") for p in PRECISIONS]
    return None if None in ms else sum(ms) / 1000


def predicted_seconds(samples: int, host_seconds: float, processes: int) -> float:
    """Wall time of the emulated runs, s, for ``samples`` per precision: run_emulated splits them into
    ``processes`` chunks per model, each a guest process with a warm-up inference, ``processes`` at a time."""
    chunks = max(1, min(processes, samples))
    rounds = math.ceil(len(PRECISIONS) * chunks / max(1, processes))
    return rounds * GUEST_STARTUP_S + (samples + chunks) * host_seconds * EMULATION_SLOWDOWN / max(1, processes)


def plan_samples(target: TargetProfile, host_seconds: float | None, processes: int,
                 forced: bool) -> tuple[int, float | None] | None:
    """(samples per precision, predicted s): the profile's emulation_samples, fewer (at least
    MIN_EMULATION_SAMPLES) when they would take longer than its emulation_max_seconds; None (skip the stage) when
    even the fewest would take over SKIP_FACTOR times that and the stage was not asked for (``forced``)."""
    wanted = target.emulation_samples
    if host_seconds is None:
        return wanted, None
    budget, fewest = target.emulation_max_seconds, _fewest(target)
    fits = [n for n in range(fewest, wanted + 1) if predicted_seconds(n, host_seconds, processes) <= budget]
    n = fits[-1] if fits else fewest
    seconds = predicted_seconds(n, host_seconds, processes)
    if seconds > SKIP_FACTOR * budget and not forced:
        return None
    return n, round(seconds, 1)


def _fewest(target: TargetProfile) -> int:
    """The fewest samples per precision the stage runs: MIN_EMULATION_SAMPLES, or the profile's count if lower."""
    return min(MIN_EMULATION_SAMPLES, target.emulation_samples)


def _too_slow(ctx: BuildContext, plans: dict) -> None:
    """The stage would take far longer than the profile allows: skipped, the host judges, the user is told."""
    fewest = _fewest(ctx.target)
    worst = max(predicted_seconds(fewest, _host_seconds(ctx, fmt), host_cores())
                for fmt, plan in plans.items() if plan is None)
    why = (f"about {worst / 60:.0f} min for {fewest} samples per precision (predicted from this "
           f"host's one-thread latency), over {SKIP_FACTOR:.0f}x the profile's emulation_max_seconds "
           f"({ctx.target.emulation_max_seconds:.0f} s)")
    ctx.records["device"] = {"skipped": why}
    ctx.warn(f"device stage skipped: {why}; the host measurements judge. --emulate runs it anyway")


def _run_format(ctx: BuildContext, device: emulation.Device, fmt: str, plan: tuple[int, float | None]) -> dict:
    samples, predicted = plan
    if predicted is not None and predicted > 120:  # a long wait is announced, not discovered
        ctx.progress(f"device stage for {fmt}: about {predicted / 60:.0f} min emulated ({samples} samples per "
                     f"precision; --no-emulate skips it)", 0, 1)
    sub = ctx.val.subset(sample_indices(len(ctx.val), samples, ctx.config.seed))
    # every output runs on the device, so device-vs-host agreement covers a second head too; the task's quality
    # takes what it takes in validation (the first output, unless the task wants them all: _as_task_takes)
    options = run_emulated.RunOptions(processes=host_cores(), all_outputs=True, progress=ctx.progress,
                                      runner_files=getattr(ctx.task, "runner_files", ()))
    jobs = [run_emulated.Job(p, fmt, ctx.get(fmt, p).path) for p in PRECISIONS]
    runs = run_emulated.run(device, jobs, ctx.inputs.golden_inputs(sub.x), ctx.workdir / f"device-{fmt}", options)
    dev = {p: runs[p].outputs for p in PRECISIONS}
    host = {p: backends.get(fmt).Runner(ctx.get(fmt, p).path, threads=1).run_samples(sub.x, all_outputs=True)
            for p in PRECISIONS}
    rec = {"kind": "emulated-device", "qemu_cpu": device.emulation.qemu_cpu, "samples": len(sub),
           "agreement_with_host": {p: _agreement(host[p], dev[p]) for p in PRECISIONS},
           "quality_on_device": ctx.task.quality(*_as_task_takes(ctx, dev), sub.truth),
           "quality_on_host_subset": ctx.task.quality(*_as_task_takes(ctx, host), sub.truth),
           "instructions": {p: runs[p].insns for p in PRECISIONS},
           "instruction_spread": {p: round(runs[p].spread, 6) for p in PRECISIONS},
           "emulation_seconds": round(max(r.seconds for r in runs.values()), 1),
           "planned": {"samples": samples, "profile_samples": ctx.target.emulation_samples,
                       "predicted_seconds": predicted, "max_seconds": ctx.target.emulation_max_seconds}}
    val = ctx.records["validation"][fmt]
    val["device"] = rec
    est = _estimates(ctx, device, fmt, rec["instructions"], val["latency_ms"].get("device_estimate") or {})
    if est:
        val["latency_ms"]["device_emulated"] = est
    _judge(ctx, fmt, val, rec, est, dev, sub.truth)
    _int8_note(ctx, fmt, rec["instructions"])
    return rec


def _as_task_takes(ctx: BuildContext, outs: dict) -> tuple:
    """(FP32, INT8) outputs as the task's quality and interval take them, from {precision: every output (a
    list)}: the list for tasks that want every output, else its first output."""
    every = getattr(ctx.task, "all_outputs", False)
    return tuple(outs[p] if every else outs[p][0] for p in PRECISIONS)


def _agreement(host: np.ndarray | list, dev: np.ndarray | list) -> dict:
    """Top-1 agreement of the first output (0-1; None unless it is (N, classes)), max |difference| over every
    output and the fraction of output values that differ at all."""
    hosts, devs = (host, dev) if isinstance(host, list) else ([host], [dev])
    diffs = [np.abs(h.astype(np.float64) - d.astype(np.float64)).ravel() for h, d in zip(hosts, devs, strict=True)]
    diff = np.concatenate(diffs)
    first_h, first_d = hosts[0], devs[0]
    top1 = float((first_h.argmax(-1) == first_d.argmax(-1)).mean()) if first_h.ndim == 2 else None
    return {"top1": None if top1 is None else round(top1, 4), "max_abs_diff": float(f"{diff.max():.4g}"),
            "fraction_different": round(float((diff > 1e-6).mean()), 4), "outputs": len(hosts)}


def _estimates(ctx: BuildContext, device: emulation.Device, fmt: str, insns: dict, old: dict) -> dict:
    """{fp32, int8}: the device estimate from instructions x CPI / clock, or the operator-count one
    (edgepack.device.estimate) when its leave-one-out error on the profile's references is smaller. Empty (with a
    warning) when neither can be made."""
    counts = cpi.reference_counts(ctx.target, device, fmt=fmt, count_missing=False)
    if not any(counts.values()):
        ctx.warn(f"{fmt}: no emulated-work latency estimate: the profile's reference networks have not been counted "
                 f"on the emulated {ctx.target.name} (`edgepack device prepare {ctx.target.name}` counts them, about "
                 "an hour here); the operator-count estimate is used")
    out = {}
    for p in PRECISIONS:
        candidates = []
        try:
            if any(counts.values()):
                candidates.append(cpi.estimate(insns[p]["total"], p, ctx.target, counts, fmt))
        except EdgepackError as exc:
            ctx.warn(f"{fmt}: no emulated device latency for {p.upper()}: {exc.message}")
        prev = old.get(p) or _operator_count_estimate(ctx, fmt, p)
        if prev:
            errors = [abs(r["error"]) for r in prev.get("references", []) if r["error"] is not None]
            candidates.append({**prev, "max_abs_error": max(errors, default=None)})
        ranked = sorted((c for c in candidates if c.get("max_abs_error") is not None),
                        key=lambda c: c["max_abs_error"])
        if ranked:
            out[p] = {**ranked[0], "alternatives": [{k: c[k] for k in ("kind", "p50", "band", "max_abs_error")}
                                                     for c in ranked[1:]]}
    return out


def _operator_count_estimate(ctx: BuildContext, fmt: str, precision: str) -> dict | None:
    """The operator-count estimate (edgepack.device.estimate), for comparison; None when it cannot be made here."""
    from edgepack.device import estimate

    lat = ctx.records["validation"][fmt]["latency_ms"]
    try:
        return estimate.estimate(ctx.get(fmt, precision).path, fmt, precision, ctx.target,
                                 host_p50_ms=lat["one_thread"][precision]["p50"],
                                 graph_path=ctx.get("onnx", "fp32").path)
    except EdgepackError:
        return None


def verdict(band: list[float], limit: float) -> str:
    """pass: the whole band is within the limit; fail: the whole band is over it; else inconclusive."""
    if band[1] <= limit:
        return "pass"
    if band[0] > limit:
        return "fail"
    return "inconclusive"


def _judge(ctx: BuildContext, fmt: str, val: dict, rec: dict, est: dict, dev: dict, truth) -> None:
    """Replace the host-judged rows by the device's where the device decides; recompute passed.

    The quality row: when the device's INT8 top-1 differs from the host's, the device's figure judges, unless
    its interval over the device's few samples (``dev``: {precision: every output}, as the device ran them)
    crosses the limit; then those samples cannot settle the budget and the host's figure over the whole
    validation set keeps judging, the device's figure kept beside it (``device`` in the row)."""
    lat = next((b for b in val["budgets"] if b["name"] == "latency_p50_ms"), None)
    if lat is not None and ctx.target.latency_budget_kind == "emulated" and est.get("int8"):
        _judge_latency(ctx, fmt, lat, est["int8"], val["latency_ms"]["int8"]["p50"])
    dev_top1 = rec["agreement_with_host"]["int8"]["top1"]
    if dev_top1 is not None and dev_top1 < 1.0:
        differs = f"the device's INT8 top-1 differs from the host's on {1 - dev_top1:.0%} of {rec['samples']} samples"
        row = quality_budget(ctx, rec["quality_on_device"])
        host = next((b for b in val["budgets"] if row is not None and b["name"] == row["name"]), None)
        if row is not None:
            row.update(kind=f"emulated-device, {rec['samples']} samples")
            found = budget_interval(ctx.task, *_as_task_takes(ctx, dev), truth, row, rec["samples"])
            if found is not None:
                row["interval"] = found
        if row is not None and host is not None and (row.get("interval") or {}).get("crosses_limit"):
            i = row["interval"]
            host["device"] = {k: row[k] for k in ("value", "passed", "kind", "interval")}
            ctx.warn(f"{fmt}: {differs}; the device's {row['name']} {row['value']} over them ({i['level']:.0%} "
                     f"interval {i['low']} to {i['high']}) cannot settle the budget, so the host's figure over "
                     f"{val.get('samples', 'all')} samples judges it; raise the profile's emulation_samples")
        else:
            if row is not None:
                val["budgets"] = [row if b["name"] == row["name"] else b for b in val["budgets"]]
            ctx.warn(f"{fmt}: {differs}; the quality budget judges the device's figure")
    _sqnr_floor_on_device(ctx, fmt, val, rec)
    val["passed"] = budgets.all_passed(val["budgets"])


def _sqnr_floor_on_device(ctx: BuildContext, fmt: str, val: dict, rec: dict) -> None:
    """A warning when the outputs' SQNR floor passes on the host but INT8's SQNR on the emulated device is under
    it. The host's figure over every validation sample keeps judging (the device runs a few, and an SQNR has no
    interval here), but a PP-OCR recogniser passed at 10.1 dB on the host, 9.7 on the device's kernels, with a
    whole time step's class flipped there, and nothing said so."""
    floors = [b for b in val["budgets"] if b["name"].startswith("output_sqnr_db") and b.get("passed")]
    got = (rec.get("quality_on_device") or {}).get("sqnr_db")
    if not floors or got is None:
        return
    limit = max(b["limit"] for b in floors)
    if got < limit:
        ctx.warn(f"{fmt}: INT8's output SQNR on the emulated {ctx.target.cpu} is {got} dB over its "
                 f"{rec['samples']} samples, under the {limit:g} dB floor the host's figure passes: the device's "
                 "kernels round differently, and the margin is thin; the host's figure over every validation sample "
                 "judges. Measure on the device (edgepack bench) or leave more margin (the accuracy search)")


def _judge_latency(ctx: BuildContext, fmt: str, lat: dict, e: dict, host_p50: float) -> None:
    """The latency row judged on the device estimate's band: pass, fail or inconclusive (passed None)."""
    outcome = verdict(e["band"], lat["limit"])
    lat.update(value=e["p50"], band=e["band"], kind=e["kind"], verdict=outcome,
               passed=None if outcome == "inconclusive" else outcome == "pass", host_value=host_p50)
    if outcome == "inconclusive":
        ctx.warn(f"{fmt}: latency inconclusive: the device band {e['band'][0]:.1f}-{e['band'][1]:.1f} ms "
                 f"straddles the {lat['limit']:g} ms budget; measure with edgepack bench")
    if (host_p50 <= lat["limit"]) != (outcome == "pass"):
        ctx.warn(f"{fmt}: the host measurement ({host_p50:.1f} ms) and the device estimate "
                 f"({e['p50']:.1f} ms, {outcome}) disagree on the latency budget; the device judges")


def _int8_note(ctx: BuildContext, fmt: str, insns: dict) -> None:
    """Say when INT8 does not pay off on the device, from the device's own instruction counts."""
    ratio = insns["int8"]["total"] / insns["fp32"]["total"]
    if ratio >= 0.95:
        ctx.warn(f"{fmt}: INT8 does not pay off on {ctx.target.name}: the INT8 model executes {ratio:.2f}x the "
                 f"FP32 instructions on the emulated {ctx.target.cpu} ({ctx.target.qemu_cpu})")
