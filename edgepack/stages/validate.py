"""Validate stage: FP32 and INT8 side by side on the host, in one run, against the target's budgets.

For each format: the task's quality metrics (ctx.task: e.g. top-1 accuracy and agreement), latency p50/p90
with the target's thread count (capped at the host's cores) and at one thread, file size and peak
memory. Budgets are collected and all reported, never the first failure only.
"""

from __future__ import annotations

import platform

from edgepack import backends
from edgepack.device import measure
from edgepack.inputs.data import rows
from edgepack.stages.context import BuildContext
from edgepack.tasks import budgets
from edgepack.util import host_cores

MB = 1_000_000
PICTURE_TASKS = ("detect", "segment")   # tasks whose FP32 and INT8 outputs report.html draws
PICTURE_SAMPLES = 4


def run(ctx: BuildContext) -> None:
    ctx.records["task"] = {"name": ctx.task.name, "labels": ctx.config.labels_dir,
                           "validation_targets": "labels" if ctx.val.targets is not None else None}
    if hasattr(ctx.task, "threshold"):  # the runner binarises a probability map at the same threshold
        ctx.records["task"]["prob_threshold"] = ctx.task.threshold
    if hasattr(ctx.task, "box_format"):  # and reads a detector's candidates the same way
        ctx.records["task"]["box_format"] = ctx.task.box_format
    if getattr(ctx.task, "multi_label", False):  # and scores each class with a sigmoid
        ctx.records["task"]["multi_label"] = True
    ctx.records["validation"] = {fmt: validate_format(ctx, fmt) for fmt in ctx.target.formats}
    if "onnx" in ctx.target.formats and "diagnosis" not in ctx.records and ctx.inputs.layer_diagnosis:
        from edgepack.quantize.diagnose import layer_errors

        ctx.progress("per-layer INT8 error (diagnosis)", 0, 1)
        rows = layer_errors(ctx.get("onnx", "fp32").path, ctx.get("onnx", "int8").path, ctx.val.x)
        ctx.records["diagnosis"] = {"model": "shipped INT8 ONNX", "layers": rows[:40]}


def validate_format(ctx: BuildContext, fmt: str) -> dict:
    fp32, int8 = ctx.get(fmt, "fp32"), ctx.get(fmt, "int8")
    threads = min(ctx.target.threads, host_cores())
    backend = backends.get(fmt)
    unpruned = ctx.artifacts.get(f"{fmt}:unpruned-fp32")
    outs = {}
    for art in (fp32, int8, *([unpruned] if unpruned else [])):
        step = f"validating {fmt} {art.precision} on {len(ctx.val)} samples"
        cached = ctx.outputs.get(f"{fmt}:fp32" if art.precision == "fp32" else str(art.path))
        outs[art.precision] = cached if cached is not None else backend.Runner(art.path, threads=threads).run_samples(
            ctx.val.x, progress=lambda i, n, s=step: ctx.progress(s, i, n),
            all_outputs=getattr(ctx.task, "all_outputs", False))
    result = ctx.task.quality(outs["fp32"], outs["int8"], ctx.val.truth)
    if fmt == ctx.target.formats[0]:
        for message in input_independence(outs["fp32"], ctx.task.name, ctx.val.truth,
                                          preprocessing=ctx.inputs.preprocessing_flags):
            ctx.warn(message)
        if not ctx.config.task and ctx.labels is None and ctx.val.truth is None:
            for message in pooled_features(outs["fp32"], ctx.task.name):
                ctx.warn(message)
        for message in preprocessing_doubts(ctx, result):
            ctx.warn(message)
        for message in (ctx.task.layout_doubts(outs["fp32"]) if hasattr(ctx.task, "layout_doubts") else []):
            ctx.warn(message)
        ctx.outputs["fp32_under_dither"] = dither_floor(ctx, backend, fp32.path, outs["fp32"], threads)
    if ctx.outputs.get("fp32_under_dither"):  # a property of the FP32 model on these photos: said for each format
        result["fp32_under_dither"] = ctx.outputs["fp32_under_dither"]
    if ctx.task.name in PICTURE_TASKS and fmt == ctx.target.formats[0]:
        ctx.outputs["task_pictures"] = _pictures(ctx, outs)
    result["samples"] = len(ctx.val)
    result["on_calibration_data"] = ctx.val_is_calibration
    result["latency_ms"] = _latency(ctx, fmt, threads)
    result["size_bytes"] = {"fp32": fp32.size_bytes, "int8": int8.size_bytes}
    result["peak_memory_mb"] = {a.precision: measure.memory(fmt, a.path, rows(ctx.val.x, 0, 1), threads=threads,
                                                            workdir=ctx.workdir)["model_rss_mb"]
                                for a in (fp32, int8)}
    if ctx.config.estimate_device or ctx.target.latency_budget_kind == "device-estimate":
        result["latency_ms"]["device_estimate"] = _device_estimates(ctx, fmt, result["latency_ms"])
    if unpruned:
        result["unpruned_fp32"] = _unpruned(ctx, outs, unpruned, result["latency_ms"])
    result["budgets"] = check_budgets(ctx, result)
    _quality_interval(ctx, fmt, result, outs)
    _judge_every_output(ctx, fmt, result, outs)
    result["passed"] = budgets.all_passed(result["budgets"])
    _speed_notes(ctx, fmt, result["latency_ms"])
    return result


#: how far the dither moves each pixel, in 8-bit steps: the rounding any decoded photo already carries
DITHER_STEP = 0.5
DITHER_SAMPLES = 1000   # the first this many validation samples are run again, dithered


def dither_floor(ctx: BuildContext, backend, fp32_path, ref, threads: int) -> dict | None:
    """FP32's top-1 agreement with itself when every pixel of the validation photos moves by up to half its 8-bit
    step (uniform, seeded), or None (not a classifier of decoded photos). An INT8 agreement budget above it asks
    INT8 to stay closer to FP32 than FP32 stays to itself under the rounding another JPEG decoder or resizer adds;
    the budget is then beyond what these photos allow, and a warning says so. On OpenCV's sample photos
    EfficientNet-Lite0 keeps 94.0 % of its top-1 classes, on our own held-out photos 97.0 %
    (benchmarks/bench_fresh_set.py)."""
    import numpy as np

    from edgepack.inputs.data import num_samples

    x, first = ctx.val.x, ref[0] if isinstance(ref, list) else ref
    if ctx.task.name != "classify" or not ctx.val.files or isinstance(x, dict) or getattr(x, "ndim", 0) != 4 \
            or np.ndim(first) != 2:
        return None
    n = min(num_samples(x), DITHER_SAMPLES)
    pre = ctx.config.preprocess
    ctx.progress(f"FP32 on {n} validation photos dithered by half a pixel step", 0, 1)
    runner = backend.Runner(fp32_path, threads=threads)
    found = {"agreement": round(dithered_agreement(runner.run_samples, x, first[:n].argmax(1),
                                                   pre.scale / np.asarray(pre.std, dtype=np.float64)), 4),
             "samples": n, "dither_pixel_steps": DITHER_STEP}
    limit = _pick(ctx, "min_agreement") if ctx.val.y is None or ctx.config.min_agreement is not None else None
    if limit is not None and found["agreement"] < limit:
        ctx.warn(f"FP32 keeps its own top-1 class on only {found['agreement']:.1%} of these {n} validation photos when "
                 f"each pixel moves by up to half its 8-bit step, under the agreement budget {limit}: INT8 is asked to "
                 "stay closer to FP32 than FP32 stays to itself under another decoder's rounding. Many of these "
                 "photos are near-ties for the model; the budget may be beyond what they allow (report.md)")
    return found


#: samples dithered and run at a time: a chunk of 224 px photos is 38 MB in float32 (1,000 at once, with their
#: float64 noise, took 2.4 GB)
DITHER_CHUNK = 64


def dithered_agreement(run, x, top, pixel_step) -> float:
    """The fraction of the first len(top) samples of ``x`` (N, C, H, W: an array, or a PixelArray decoded a chunk at
    a time) whose top-1 under ``run`` stays ``top`` when each value moves by up to DITHER_STEP pixel steps
    (``pixel_step``: one 8-bit step in model units, per channel or one for all; uniform, seed 0, drawn in sample
    order)."""
    import numpy as np

    from edgepack.inputs.data import sample_rows

    step = np.asarray(pixel_step, dtype=np.float64)
    step = step.reshape(1, -1, 1, 1) if step.size == x.shape[1] else np.float64(step.mean())
    rng, same = np.random.default_rng(0), 0
    for start in range(0, len(top), DITHER_CHUNK):
        rows = sample_rows(x, np.arange(start, min(start + DITHER_CHUNK, len(top))))
        noisy = (rows + rng.uniform(-DITHER_STEP, DITHER_STEP, rows.shape) * step).astype(np.float32)
        same += int((run(noisy).argmax(1) == top[start:start + len(rows)]).sum())
    return same / len(top)


#: an FP32 output whose spread over the validation samples is below this fraction of its size ignores its input
FLAT_SPREAD = 1e-3
MIN_SAMPLES_FOR_FLATNESS = 8
#: an FP32 output never larger than this in magnitude is no trained model's (random-init mobilenet_v3_small's
#: logits: ~1e-10, which a full-integer TFLite output rounds to zero: agreement 0, SQNR 0 dB, and no word why)
TINY_OUTPUT = 1e-6


def input_independence(fp32, task: str, truth=None,
                       preprocessing: str = "the preprocessing (--mean, --std, --scale)") -> list[str]:
    """Warnings when the FP32 model's outputs barely depend on its input: an untrained or wrongly loaded model,
    or preprocessing that flattens every sample. INT8 then agrees with FP32 on every sample and the verdict says
    nothing (the journey run built random weights with near-tied logits and got no word of it).

    An output is flat when, element by element, its standard deviation across the samples stays under
    FLAT_SPREAD of its largest magnitude. A classifier is also flagged when its FP32 top-1 is one class on every
    sample while the labels (if any) name several. ``preprocessing``: what makes the inputs, for the hint (a text
    model's tokenizer, not an image's --mean / --std)."""
    import numpy as np

    arrays = fp32 if isinstance(fp32, list) else [fp32]
    n = len(arrays[0]) if arrays else 0
    if n < MIN_SAMPLES_FOR_FLATNESS:
        return []
    said = []
    for k, out in enumerate(arrays):
        a = np.asarray(out, dtype=np.float64).reshape(n, -1)
        size = float(np.abs(a).max()) if a.size else 0.0
        spread = float(a.std(axis=0).max()) if a.size else 0.0
        which = f"output {k}" if len(arrays) > 1 else "output"
        if a.size and size == 0:
            said.append(f"FP32 {which} is exactly zero on every one of the {n} validation samples (e.g. a head "
                        "initialised to zeros and no trained weights loaded): INT8 equals it, so SQNR reads 999 dB "
                        "and agreement says nothing. Check that the trained weights are loaded (--weights)")
        elif 0 < size < TINY_OUTPUT:
            said.append(f"FP32 {which} is at most {size:.1e} in magnitude over the {n} validation samples: an "
                        "untrained model (random weights can shrink activations layer by layer) or a missing scale. "
                        "8-bit scales round such values to zero (a full-integer TFLite output then reads all zeros). "
                        "Check that the trained weights are loaded (--weights)")
        elif size > 0 and spread <= FLAT_SPREAD * size:
            said.append(f"FP32 {which} barely depends on the input: over the {n} validation samples it varies by "
                        f"{spread / size:.1e} of its size, so INT8 agreement and SQNR say little here. Check that the "
                        f"trained weights are loaded (--weights) and {preprocessing} is the model's")
    if task == "classify" and not said and np.asarray(arrays[0]).ndim == 2:
        top1 = np.asarray(arrays[0]).argmax(axis=1)
        labels = None if truth is None else np.asarray(truth)
        several = labels is None or (labels.ndim == 1 and len(np.unique(labels)) > 1)
        if len(np.unique(top1)) == 1 and several:
            said.append(f"FP32 predicts class {int(top1[0])} for every one of the {n} validation samples"
                        + ("" if labels is None else f", whose labels name {len(np.unique(labels))} classes")
                        + f": agreement with INT8 says little. Check the weights (--weights), --num-classes and "
                          f"{preprocessing}")
    return said


#: a first output this wide or wider, never negative, is worth asking whether it is an embedding
FEATURE_WIDTH = 16


def pooled_features(fp32, task: str) -> list[str]:
    """A warning when a classify build's first output looks like pooled features, not class scores: (N, C) with C
    >= FEATURE_WIDTH, never negative on any validation sample (a ReLU, then an average pool: a backbone with its
    head removed, ``fc = nn.Identity()``), not probabilities (some value above 1). Inferred from its shape alone
    it was built as a C-class classifier, judged by the top-1 of its largest feature, and run.py printed a 'label'.
    Called only when nothing names classes (no labels, no --labels, no --task)."""
    import numpy as np

    first = np.asarray(fp32[0] if isinstance(fp32, list) else fp32)
    if task != "classify" or first.ndim != 2 or first.shape[1] < FEATURE_WIDTH or len(first) < 2:
        return []
    if float(first.min()) < 0 or float(first.max()) <= 1.0:
        return []
    return [f"the model's first output ({first.shape[1]} values per sample) is never negative on the {len(first)} "
            "validation samples, as features after a ReLU and a pooling are, and nothing names classes: it is read "
            f"as {first.shape[1]} class scores (task classify: top-1 agreement and run.py's 'label' take its "
            "largest value). If it is an embedding, pass --task generic (every output judged by its SQNR against "
            "FP32); if it is a classifier, --labels with the class names"]


#: a labelled FP32 accuracy (%) under this, with ImageNet's mean and std applied by default, is worth a word
LOW_ACCURACY = 50.0


def preprocessing_doubts(ctx: BuildContext, result: dict) -> list[str]:
    """Warnings when the preprocessing may not be the model's: FP32 accuracy at chance level on labelled data, or
    low with ImageNet's mean and std applied because none was given (a digits CNN trained on (x - 0.5) / 0.5
    scored 20.5 % instead of 92.5 % and passed: INT8 agreed with a wrong FP32 model)."""
    import numpy as np

    from edgepack.config import IMAGENET_MEAN, IMAGENET_STD
    from edgepack.inputs.kinds import reads_photos

    if ctx.inputs.name != "image":
        return []
    pre = ctx.config.preprocess
    defaults = (tuple(pre.mean) == IMAGENET_MEAN and tuple(pre.std) == IMAGENET_STD)
    said = []
    if defaults and not reads_photos(ctx.config):  # any task: run.py reads photos with what is recorded here
        said.append("the bundle's run.py will read photos with ImageNet's mean and std (the defaults: none was "
                    "given), which edgepack cannot check against .npz samples; pass --mean, --std, --scale, --resize "
                    "and --crop as the .npz was made")
    if ctx.task.name != "classify":
        return said
    acc, y = result.get("accuracy_fp32"), ctx.val.y
    if acc is not None and y is not None and len(y):
        classes = max(int(ctx.num_outputs or 0), len(np.unique(y)))
        chance = 100.0 / max(classes, 1)
        n = len(y)
        # above chance by less than two binomial standard errors: indistinguishable from guessing
        near_chance = acc <= chance + 200.0 * np.sqrt(chance / 100 * (1 - chance / 100) / n)
        if near_chance or (defaults and acc < LOW_ACCURACY):
            what = (f"at chance level ({100 / max(classes, 1):.1f} % for {classes} classes)" if near_chance
                    else "low")
            used = (f"ImageNet's mean {list(IMAGENET_MEAN)} and std {list(IMAGENET_STD)} were applied because no "
                    "--mean/--std was given; " if defaults else "")
            said.append(f"FP32 accuracy {acc} % on the {n} labelled validation samples is {what}: INT8 is judged "
                        f"against a model that may not be seeing its inputs as trained. {used}check --mean, --std, "
                        "--scale, --resize, --crop and --channel-order against the model's training, and --weights")
    return said


def _quality_interval(ctx: BuildContext, fmt: str, result: dict, outs: dict) -> None:
    """The quality budget row's 95 % interval over the validation samples (edgepack.tasks.interval), and a
    warning when it crosses the limit: the verdict then rests on too few samples to be sure."""
    from edgepack.tasks.interval import budget_interval

    row = quality_budget(ctx, result)
    if row is None or not result["budgets"] or result["budgets"][0]["name"] != row["name"]:
        return
    found = budget_interval(ctx.task, outs["fp32"], outs["int8"], ctx.val.truth, row, len(ctx.val))
    if found is None and len(ctx.val) < 2:
        ctx.warn(f"{fmt}: {row['name']} is judged on {len(ctx.val)} validation sample: no interval can be given and "
                 "the verdict says nothing about other inputs; validate on more (--val, --val-samples)")
        return
    if found is None:
        return
    result["budgets"][0]["interval"] = found
    if found["crosses_limit"]:
        verdict = "passes" if row["passed"] else "fails"
        ctx.warn(f"{fmt}: {row['name']} {row['value']} {verdict} ({row['op']} {row['limit']}), but its "
                 f"{found['level']:.0%} interval over the {found['samples']} validation samples is "
                 f"{found['low']} to {found['high']}, which crosses the limit: too few samples to be sure; "
                 "validate on more (--val)")


def _pictures(ctx: BuildContext, outs: dict) -> dict:
    """The first PICTURE_SAMPLES inputs with their raw FP32 and INT8 outputs, drawn into report.html."""
    def first(o):
        return [a[:PICTURE_SAMPLES] for a in o] if isinstance(o, list) else o[:PICTURE_SAMPLES]

    return {"task": ctx.task.name, "threshold": getattr(ctx.task, "threshold", None),
            "box_format": getattr(ctx.task, "box_format", "auto"),
            "x": rows(ctx.val.x, 0, PICTURE_SAMPLES), "fp32": first(outs["fp32"]),
            "int8": first(outs["int8"])}


def _judge_every_output(ctx: BuildContext, fmt: str, result: dict, outs: dict) -> None:
    """Per-output SQNR; outputs the task's quality budget does not judge get the min_output_sqnr_db floor, and
    integer outputs (a class map, ids, a count) the fraction equal to FP32's (edgepack.stages.judge)."""
    from edgepack.stages import judge

    def first(o):
        return o[0] if isinstance(o, list) else o

    sqnrs, matches = judge.per_output(ctx, fmt, result["sqnr_db"], (first(outs["fp32"]), first(outs["int8"])))
    result["outputs_sqnr_db"] = sqnrs
    if matches:
        result["outputs_match"] = matches
    result["budgets"] += judge.budget_rows(ctx, sqnrs, quality_budget(ctx, result) is not None, matches)


def _unpruned(ctx: BuildContext, outs: dict, art, latency: dict) -> dict:
    """The model before pruning, on the same samples: its task metric against the labels (None without labels,
    or for a generic model), agreement (classifiers) and SQNR of pruned FP32 with it, size."""
    q = ctx.task.quality(outs["unpruned-fp32"], outs["fp32"], ctx.val.truth)
    prune = ctx.records.get("prune", {})
    key, label = getattr(ctx.task, "headline", None) or (None, None)
    labelled = ctx.val.truth is not None
    return {"metric": key, "metric_name": label, "accuracy": q.get(f"{key}_fp32") if key and labelled else None,
            "pruned_fp32_agreement": q["agreement"], "pruned_fp32_sqnr_db": q.get("sqnr_db"),
            "size_bytes": art.size_bytes, "latency_ms": latency.get("unpruned-fp32"),
            "latency_ms_one_thread": latency["one_thread"].get("unpruned-fp32"),
            "params": prune.get("params_before"), "macs": prune.get("macs_before"),
            "pruned_params": prune.get("params_after"), "pruned_macs": prune.get("macs_after")}


def _latency(ctx: BuildContext, fmt: str, threads: int) -> dict:
    keys = ("fp32", "int8", "unpruned-fp32") if f"{fmt}:unpruned-fp32" in ctx.artifacts else ("fp32", "int8")
    models = {p: (fmt, ctx.get(fmt, p).path) for p in keys}
    x = rows(ctx.val.x, 0, 1)
    ctx.progress(f"timing {fmt} FP32 vs INT8 ({threads} thread(s))", 0, 1)
    main = measure.latency(models, x, threads=threads, runs=ctx.config.latency_runs, workdir=ctx.workdir)
    one = main if threads == 1 else measure.latency(models, x, threads=1, runs=ctx.config.latency_runs,
                                                     workdir=ctx.workdir)
    return {**main, "threads": threads,
            "kind": "measured-host", "host": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "note": _thread_note(ctx, threads), "one_thread": one}


def _device_estimates(ctx: BuildContext, fmt: str, lat: dict) -> dict:
    """{fp32, int8}: device p50 estimates with error bands (kind estimated-device), or a warning why not."""
    from edgepack.device import estimate
    from edgepack.errors import EdgepackError

    out = {}
    for prec in ("fp32", "int8"):
        ctx.progress(f"estimating {prec.upper()} latency on {ctx.target.name} (reference models)", 0, 1)
        try:
            out[prec] = estimate.estimate(ctx.get(fmt, prec).path, fmt, prec, ctx.target,
                                          host_p50_ms=lat["one_thread"][prec]["p50"],
                                          graph_path=ctx.get("onnx", "fp32").path)
        except EdgepackError as exc:
            ctx.warn(f"{fmt}: no device estimate for {prec.upper()}: {exc.message}")
    for message in estimate.int8_warnings(ctx.target, fmt, estimates=out):
        ctx.warn(message)
    return out


def _thread_note(ctx: BuildContext, threads: int) -> str | None:
    if threads < ctx.target.threads:
        return (f"the target runs {ctx.target.threads} threads; this host has {host_cores()} cores, "
                f"so {threads} were used")
    return None


def _speed_notes(ctx: BuildContext, fmt: str, lat: dict) -> None:
    ratio = lat["one_thread"]["int8"]["p50"] / lat["one_thread"]["fp32"]["p50"]
    if ratio >= 0.95:
        ctx.warn(f"{fmt}: INT8 does not pay off on this host: INT8 p50 is {ratio:.2f}x FP32 at one thread")
    arm = ctx.target.isa.startswith("armv")
    if ratio < 0.95 and arm and "dotprod" not in ctx.target.simd_features:
        from edgepack.device import emulation

        counted = ("the device stage counts its work" if emulation.stage_runs(ctx.config.emulate, ctx.target.emulate)
                   else "with --emulate, the device stage counts its work")
        ctx.warn(f"{fmt}: INT8 runs at {ratio:.2f}x FP32 latency on this host; {ctx.target.cpu} has no INT8 "
                 f"dot-product instructions, so expect a different gain there ({counted})")


def _pick(ctx: BuildContext, name: str):
    """A budget: the command line / config file beats the profile."""
    value = getattr(ctx.config, name)
    return value if value is not None else getattr(ctx.target, name)


def quality_budget(ctx: BuildContext, res: dict) -> dict | None:
    """The task's quality budget (e.g. accuracy drop with labels, agreement without), checked; None if unset."""
    return ctx.task.quality_budget(res, {name: _pick(ctx, name) for name in ctx.task.budget_names})


def _asked_too(ctx: BuildContext, res: dict, rows: list[dict]) -> list[dict]:
    """A quality budget the user set (command line or --config, not the profile) that the task's own choice
    left out: with labels a classifier is judged on its accuracy drop, and an explicit --min-agreement was
    silently dropped. It is judged as well."""
    agree = ctx.config.min_agreement
    if agree is None or res.get("agreement") is None or any(r["name"] == "agreement" for r in rows):
        return []
    return [budgets.row("agreement", res["agreement"], agree, ">=")]


def _pruning_budget(ctx: BuildContext, res: dict) -> list[dict]:
    """Pruning's cost, judged: the shipped INT8 model's accuracy against the unpruned FP32 model's (the quality
    budget compares INT8 with the *pruned* FP32 only, so a prune that lost 24 points passed). A row when
    --prune-max-drop is set; otherwise a warning when pruning alone lost more than the INT8 drop budget."""
    unpruned = res.get("unpruned_fp32")
    prune = ctx.config.prune
    if not unpruned or prune is None:
        return []
    key = unpruned.get("metric") or "accuracy"
    before, after, pruned = unpruned.get("accuracy"), res.get(f"{key}_int8"), res.get(f"{key}_fp32")
    if before is None or after is None:
        if prune.max_drop is not None and not any(w.startswith("--prune-max-drop") for w in ctx.warnings):
            ctx.warn("--prune-max-drop is not judged: it needs labelled validation data (class folders or y in the "
                     ".npz; --labels-dir for detect and segment) and a classify, detect or segment task")
        return []
    if prune.max_drop is not None:
        row = budgets.row(f"{key}_drop_vs_unpruned_points", round(before - after, 2), prune.max_drop, "<=")
        return [row]
    limit = _pick(ctx, ctx.task.budget_names[0])
    lost = round(before - pruned, 2) if pruned is not None else None
    said = any(w.startswith("pruning cost") for w in ctx.warnings)  # once, not per format
    if lost is not None and lost > (limit if limit is not None else 1.0) and not said:
        name = unpruned.get("metric_name") or "accuracy (%)"
        ctx.warn(f"pruning cost {lost} points of {name} (unpruned FP32 {before}, pruned FP32 {pruned}), which no "
                 "budget judges: set --prune-max-drop POINTS to judge unpruned FP32 -> shipped INT8, or prune "
                 "less / fine-tune (--finetune DATA)")
    return []


def _unjudged(ctx: BuildContext, res: dict, rows: list[dict]) -> None:
    """A warning for each quality budget the user set (command line or --config) that this validation cannot judge:
    --max-map-drop on images without a labelled object (or FP32 detections to stand in for labels) vanished from
    the budget table, and the build said PASSED; --max-accuracy-drop without labels was judged as agreement."""
    for name in ctx.task.budget_names:
        value = getattr(ctx.config, name, None)
        if value is None or name == "min_output_sqnr_db" \
                or (name == "min_agreement" and any(r["name"] == "agreement" for r in rows)):
            continue  # the SQNR floor is judged on every output (stages.judge); agreement as asked (_asked_too)
        alone = {n: (value if n == name else None) for n in ctx.task.budget_names}
        flag = "--" + name.replace("_", "-")
        if ctx.task.quality_budget(res, alone) is None and not any(w.startswith(flag) for w in ctx.warnings):
            ctx.warn(f"{flag} {value} is not judged: the validation data gives no {ctx.task.name} figure for it "
                     "(labels with objects or classes to score: class folders or y in the .npz, --labels-dir for "
                     "detect and segment; without labels, FP32 predictions confident enough to stand in for them)")


#: the task metric a segment / detect build shows without a budget of its own: (quality key, name, option)
TASK_DROPS = {"segment": ("miou_drop", "mIoU", "--max-miou-drop"),
              "detect": ("map50_drop", "mAP@0.5", "--max-map-drop")}


def _task_drop_unjudged(ctx: BuildContext, res: dict, rows: list[dict]) -> None:
    """A warning when a segmentation / detection build shows its task metric's drop but no budget judges it (the
    shipped profiles set none; only the SQNR floor then judges the outputs): an fcn_resnet50 --task segment build
    showed "mIoU drop 19.70 points" with every output's SQNR passing and no word."""
    key, name, flag = TASK_DROPS.get(ctx.task.name, (None, None, None))
    drop = res.get(key) if key else None
    if drop is None or rows:
        return
    limit = _pick(ctx, "max_accuracy_drop")
    limit = 1.0 if limit is None else limit
    if drop > limit and not any(w.startswith(f"{name} drop") for w in ctx.warnings):
        ctx.warn(f"{name} drop {drop:.2f} points FP32 -> INT8, which no budget judges (only each output's SQNR "
                 f"is): set {flag} POINTS (or {flag.lstrip('-').replace('-', '_')} in the profile) to judge it")


def check_budgets(ctx: BuildContext, res: dict) -> list[dict]:
    """Every budget that applies, with value, limit and verdict; CLI overrides beat the profile."""
    rows = [b for b in [quality_budget(ctx, res)] if b is not None]
    _unjudged(ctx, res, rows)
    _task_drop_unjudged(ctx, res, rows)
    rows += _asked_too(ctx, res, rows)
    rows += _pruning_budget(ctx, res)
    if (lim := _pick(ctx, "max_latency_ms")) is not None:
        est = res["latency_ms"].get("device_estimate", {}).get("int8")
        if ctx.target.latency_budget_kind == "device-estimate" and est:
            row = budgets.row("latency_p50_ms", est["p50"], lim, "<=")
            row.update(kind="estimated-device", band=est["band"])
        else:
            row = budgets.row("latency_p50_ms", res["latency_ms"]["int8"]["p50"], lim, "<=")
            row["kind"] = "measured-host"
        rows.append(row)
    if (lim := _pick(ctx, "max_size_mb")) is not None:
        # to the byte: rounded to 1 kB, a 10.0004 MB file passed a 10 MB budget and the table's figure differed
        # from the summary's in the last digit
        rows.append(budgets.row("size_mb", round(res["size_bytes"]["int8"] / MB, 6), lim, "<="))
    return rows
