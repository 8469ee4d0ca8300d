"""INT8 by candidates (the recipe edgepack.inputs.kinds gives text models): several INT8 models are built,
measured on the validation set, and the better one ships.

ONNX: calibrated static INT8 and dynamic INT8.

Static INT8 (backends.onnx_text_quantize.quantize_text_onnx: weight MatMuls and the word embeddings in int8,
percentile calibration, head in float) is usually as accurate as onnxruntime's dynamic INT8 and a little
slower; which one wins depends on the model and the host, so both are measured on the validation set and
``pick_int8`` chooses on accuracy drop and one-thread latency. The choice and the reason are recorded for
the report. The accuracy-aware search (search.py) is not run for text models.

TFLite: full-integer INT8 (int8 activations calibrated on the texts) is tried first: converted in a child process,
then run on the validation texts in another, because LiteRT 2.1 aborts the whole process on some
full-integer BERTs (all-MiniLM-L6-v2 always; a tiny 2-layer BERT depending on its calibration ranges). When
it cannot run, dynamic-range INT8 (int8 weights, float activations) ships instead, and the manifest, report
and warnings say so and why; never silently. When both run, they are compared like the ONNX candidates.
"""

from __future__ import annotations

import shutil
from collections import Counter

from edgepack.errors import StageError
from edgepack.stages.context import Artifact, BuildContext
from edgepack.stages.quantize import evaluate_int8, meets_budget
from edgepack.util import quiet_root_logger

DEFAULT_METHOD = "percentile"   # what kept BERT classifiers within 0.1 point (examples/sms_spam/README.md)
LATENCY_RUNS = 20
DYNAMIC_RANGE = "dynamic-range INT8: int8 weights, float activations"
TFLITE_RECIPES = {
    "dynamic-range": {"recipe": DYNAMIC_RANGE, "weights": "int8 per-channel",
                      "activations": "float32 (LiteRT quantizes FULLY_CONNECTED inputs on each call)"},
    "full-integer": {"recipe": "full-integer INT8: int8 weights and activations", "weights": "int8 per-channel",
                     "activations": "int8 per-tensor, calibrated on the --calib texts"},
}


def _rounding_not_applied(ctx: BuildContext, fmt: str) -> None:
    """Say so when --weight-rounding asks for what the text recipes do not do (said, never silently dropped)."""
    if ctx.config.weight_rounding != "nearest":
        ctx.warn(f"--weight-rounding {ctx.config.weight_rounding} applies to the INT8 recipe of image and generic "
                 f"models; the text model's {fmt} INT8 candidates round weights to nearest")


def onnx_candidates(ctx: BuildContext) -> None:
    """Build both INT8 candidates, measure them, ship the chosen one as model_int8.onnx."""
    _rounding_not_applied(ctx, "ONNX")
    candidates = {k: ctx.workdir / f"model_int8_{k}.onnx" for k in ("static", "dynamic")}
    settings = {"static": _static(ctx, candidates["static"]), "dynamic": _dynamic(ctx, candidates["dynamic"])}
    ctx.progress("INT8: comparing static and dynamic on the validation texts", 0, 1)
    chosen, why, rows = _compare(ctx, "onnx", candidates)
    _ship(ctx, "onnx", candidates[chosen])
    ctx.add(Artifact("onnx", "int8-calibrated", candidates["static"]))  # what `edgepack diagnose` measures
    ctx.records["quantization_onnx"] = {**settings[chosen], "chosen": chosen, "why": why, "candidates": rows}
    if not meets_budget(ctx, {"accuracy_drop": rows[chosen]["accuracy_drop"], "agreement": rows[chosen]["agreement"]}):
        ctx.warn(f"INT8 ({chosen}) misses the accuracy budget; the accuracy-aware search is not run for text "
                 "models yet: try more or more typical --calib texts, or --calibration-method minmax/entropy")


def tflite_candidates(ctx: BuildContext) -> None:
    """FP32 .tflite (the reference), then full-integer INT8 if LiteRT can run it, else dynamic-range INT8."""
    _rounding_not_applied(ctx, "TFLite")
    from edgepack import backends, isolate

    tflite = backends.get("tflite")

    fp32_onnx, workdir = ctx.get("onnx", "fp32").path, ctx.workdir / "tflite"
    ctx.progress("converting to TFLite FP32 and dynamic-range INT8 (onnx2tf)", 0, 1)
    fp32, dynamic, fidelity = isolate.call(convert_fp32_and_dynamic, fp32_onnx, workdir, ctx.calib.x,
                                           key="tflite-convert", step="TFLite conversion (FP32, dynamic-range INT8)")
    ctx.add(Artifact("tflite", "fp32", fp32))
    mode = ctx.config.text_tflite_int8
    if mode == "dynamic-range":
        full, why_not = None, "not tried (text_tflite_int8 = dynamic-range)"
    else:
        full, why_not = _full_integer(ctx, fp32_onnx, workdir)
    if full is None and mode == "full-integer":
        raise StageError(f"full-integer INT8 cannot run: {why_not}",
                         hint="use --text-tflite-int8 auto (falls back to dynamic-range INT8, reported) "
                              "or dynamic-range")
    candidates = {"dynamic-range": dynamic}
    if full is not None:
        candidates["full-integer"] = full
        chosen, why, rows = _compare(ctx, "tflite", candidates)
    else:
        chosen, why, rows = "dynamic-range", (why_not if mode == "dynamic-range"
                                              else f"full-integer INT8 cannot run: {why_not}"), None
    _ship(ctx, "tflite", candidates[chosen])
    floats = tflite.float_ops(candidates[chosen])
    ctx.records["quantization_tflite"] = {
        "chosen": chosen, "why": why, **TFLITE_RECIPES[chosen], "io": "token ids in, float32 logits out",
        "full_integer": {"runs": full is not None, "why_not": why_not},
        "float_ops": floats if chosen == "full-integer" else [],
        "float_activation_ops": dict(sorted(Counter(f.split(":")[0] for f in floats).items())),
        "fp32_fidelity": fidelity, **({"candidates": rows} if rows else {})}
    if chosen == "dynamic-range":
        ctx.warn(f"TFLite: shipping {DYNAMIC_RANGE} ({why})")
    elif floats:
        ctx.warn(f"TFLite: {len(floats)} op(s) the converter could not quantize (no INT8 version) run in float: "
                 f"{', '.join(floats[:8])}")


def _full_integer(ctx: BuildContext, fp32_onnx, workdir) -> tuple:
    """(full-integer .tflite, None) when it converts and LiteRT runs it on every validation text in a child
    process (its outputs are cached for the comparison); else (None, why not)."""
    import importlib.metadata as md

    from edgepack import backends, isolate
    from edgepack.device import measure

    tflite = backends.get("tflite")

    ctx.progress("converting to TFLite full-integer INT8 (calibrating on texts)", 0, 1)
    try:
        path = isolate.call(tflite.convert_text_int8, fp32_onnx, workdir, "full-integer", ctx.calib.x,
                            key="tflite-text-int8", step="TFLite full-integer conversion")
    except StageError as exc:
        return None, f"the TFLite converter refused it ({exc.message})"
    ctx.progress("trying the full-integer model in a child process", 0, 1)
    what = f"LiteRT {md.version('ai-edge-litert')} running it on the validation texts"
    try:
        ctx.outputs[str(path)] = measure.outputs("tflite", path, ctx.val.x, threads=1, workdir=ctx.workdir,
                                                 what=what)
    except StageError as exc:
        return None, exc.message
    return path, None


def convert_fp32_and_dynamic(fp32_onnx, workdir, calib) -> tuple:
    """(FP32 .tflite, dynamic-range INT8 .tflite, the FP32 one's fidelity to ONNX on ``calib``, token arrays): one
    TensorFlow import for both, run in a child (isolate)."""
    from edgepack.backends import tflite, tflite_fidelity

    fp32 = tflite.convert(fp32_onnx, workdir, None)
    fidelity = tflite_fidelity.check(fp32_onnx, fp32, calib, scratch=workdir / "fidelity")
    return fp32, tflite.convert_text_int8(fp32_onnx, workdir, "dynamic-range"), fidelity


def _compare(ctx: BuildContext, fmt: str, candidates: dict) -> tuple[str, str, dict]:
    """Measure every INT8 candidate on the validation set (quality) and at one thread (latency);
    return (chosen name, why, per-candidate rows for the report)."""
    quality = {name: evaluate_int8(ctx, path, fmt) for name, path in candidates.items()}
    ratios = _latency_ratios(ctx, fmt, candidates)
    chosen, why = _pick(quality, ratios)
    return chosen, why, _candidate_rows(quality, ratios, candidates)


def _ship(ctx: BuildContext, fmt: str, path) -> None:
    """Copy the chosen candidate to model_int8.<ext>, keep its cached outputs, register the artifact."""
    final = ctx.workdir / f"model_int8{path.suffix}"
    shutil.copyfile(path, final)
    ctx.outputs[str(final)] = ctx.outputs.get(str(path))
    ctx.add(Artifact(fmt, "int8", final))


def _static(ctx: BuildContext, out) -> dict:
    from edgepack.backends.onnx_text_quantize import quantize_text_onnx

    ctx.progress("quantizing ONNX to static INT8 (calibrating on texts)", 0, 1)
    with quiet_root_logger():
        return quantize_text_onnx(ctx.get("onnx", "fp32").path, out, ctx.calib.x,
                                  method=ctx.config.calibration_method or DEFAULT_METHOD, target_arch=ctx.target.arch)


def _dynamic(ctx: BuildContext, out) -> dict:
    from edgepack.backends.onnx_text_quantize import quantize_text_dynamic

    ctx.progress("quantizing ONNX to dynamic INT8", 0, 1)
    with quiet_root_logger():
        return quantize_text_dynamic(ctx.get("onnx", "fp32").path, out)


def _latency_ratios(ctx: BuildContext, fmt: str, candidates: dict) -> dict[str, float]:
    """One-thread p50 of each candidate / FP32's, all interleaved in one child process."""
    from edgepack.device import measure
    from edgepack.inputs.data import rows

    models = {k: (fmt, p) for k, p in {"fp32": ctx.get(fmt, "fp32").path, **candidates}.items()}
    res = measure.latency(models, rows(ctx.val.x, 0, 1), threads=1, runs=LATENCY_RUNS, workdir=ctx.workdir)
    return {k: res[k]["p50"] / res["fp32"]["p50"] for k in candidates}


def _pick(quality: dict[str, dict], ratios: dict[str, float]) -> tuple[str, str]:
    """pick_int8 on accuracy drop (points) with labels, else on disagreement with FP32 (percent of texts), else (a
    model whose outputs are not class scores: a regression, an embedding) on the SQNR of its outputs, dB below the
    best candidate's. That last case was compared on a disagreement of 100 % for every candidate (no agreement
    to read), so the faster one shipped whatever its SQNR and the reason said "drop 100.00 points"."""
    from edgepack.backends.onnx_text_quantize import pick_int8

    if all(q["accuracy_drop"] is not None for q in quality.values()):
        loss, basis, unit = {k: q["accuracy_drop"] for k, q in quality.items()}, "accuracy drop", "points"
    elif all(q["agreement"] is not None for q in quality.values()):
        loss = {k: round(100 * (1 - q["agreement"]), 2) for k, q in quality.items()}
        basis, unit = "disagreement with FP32, % of texts (no labels)", "points"
    else:
        sqnr = {k: min(float(q["sqnr_db"]), 300.0) for k, q in quality.items()}  # identical outputs: inf dB
        loss = {k: round(max(sqnr.values()) - v, 2) for k, v in sqnr.items()}
        basis, unit = "INT8-vs-FP32 SQNR of the outputs, dB below the best candidate's (no class scores)", "dB"
    chosen, why = pick_int8({k: {"accuracy_drop": loss[k], "latency_ratio": ratios[k]} for k in quality}, unit)
    return chosen, f"{why}; compared on {basis}"


def _candidate_rows(quality: dict, ratios: dict, paths: dict) -> dict:
    return {k: {"accuracy_drop": q["accuracy_drop"], "agreement": q["agreement"], "sqnr_db": q["sqnr_db"],
                "latency_ratio_1thread": round(ratios[k], 3), "size_bytes": paths[k].stat().st_size}
            for k, q in quality.items()}
