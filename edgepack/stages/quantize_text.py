"""Quantize stage for text models (ONNX): calibrated static INT8 and dynamic INT8, the better one ships.

Static INT8 (backends.onnx_text_quantize.quantize_text_onnx: weight MatMuls and the word embeddings in int8,
percentile calibration, head in float) is usually as accurate as onnxruntime's dynamic INT8 and a little
slower; which one wins depends on the model and the host, so both are measured on the validation set and
``pick_int8`` chooses on accuracy drop and one-thread latency. The choice and the reason are recorded for
the report. The accuracy-aware search (search.py) is not run for text models.
"""

from __future__ import annotations

import shutil

from ..context import Artifact, BuildContext
from .quantize import _evaluate, _meets, quiet_root_logger

DEFAULT_METHOD = "percentile"   # what kept BERT classifiers within 0.1 point (examples/sms_spam/README.md)
LATENCY_RUNS = 20


def onnx_text(ctx: BuildContext) -> None:
    """Build both INT8 candidates, measure them, ship the chosen one as model_int8.onnx."""
    candidates = {k: ctx.workdir / f"model_int8_{k}.onnx" for k in ("static", "dynamic")}
    settings = {"static": _static(ctx, candidates["static"]), "dynamic": _dynamic(ctx, candidates["dynamic"])}
    ctx.progress("INT8: comparing static and dynamic on the validation texts", 0, 1)
    quality = {name: _evaluate(ctx, path) for name, path in candidates.items()}
    ratios = _latency_ratios(ctx, candidates)
    chosen, why = _pick(quality, ratios)
    final = ctx.workdir / "model_int8.onnx"
    shutil.copyfile(candidates[chosen], final)
    ctx.outputs[str(final)] = ctx.outputs.get(str(candidates[chosen]))
    ctx.records["quantization_onnx"] = {**settings[chosen], "chosen": chosen, "why": why,
                                        "candidates": _candidate_rows(quality, ratios, candidates)}
    if not _meets(ctx, quality[chosen]):
        ctx.warn(f"INT8 ({chosen}) misses the accuracy budget; the accuracy-aware search is not run for text "
                 "models yet: try more or more typical --calib texts, or --calibration-method minmax/entropy")
    ctx.add(Artifact("onnx", "int8", final))


def _static(ctx: BuildContext, out) -> dict:
    from ..backends.onnx_text_quantize import quantize_text_onnx

    ctx.progress("quantizing ONNX to static INT8 (calibrating on texts)", 0, 1)
    with quiet_root_logger():
        return quantize_text_onnx(ctx.get("onnx", "fp32").path, out, ctx.calib.x,
                                  method=ctx.config.calibration_method or DEFAULT_METHOD)


def _dynamic(ctx: BuildContext, out) -> dict:
    from ..backends.onnx_text_quantize import quantize_text_dynamic

    ctx.progress("quantizing ONNX to dynamic INT8", 0, 1)
    with quiet_root_logger():
        return quantize_text_dynamic(ctx.get("onnx", "fp32").path, out)


def _latency_ratios(ctx: BuildContext, candidates: dict) -> dict[str, float]:
    """One-thread p50 of each candidate / FP32's, all interleaved in one child process."""
    from .. import measure
    from ..data import rows

    models = {k: ("onnx", p) for k, p in {"fp32": ctx.get("onnx", "fp32").path, **candidates}.items()}
    res = measure.latency(models, rows(ctx.val.x, 0, 1), threads=1, runs=LATENCY_RUNS, workdir=ctx.workdir)
    return {k: res[k]["p50"] / res["fp32"]["p50"] for k in candidates}


def _pick(quality: dict[str, dict], ratios: dict[str, float]) -> tuple[str, str]:
    """pick_int8 on accuracy drop (points) with labels, else on disagreement with FP32 (percent of texts)."""
    from ..backends.onnx_text_quantize import pick_int8

    labelled = all(q["accuracy_drop"] is not None for q in quality.values())
    drop = {k: q["accuracy_drop"] if labelled else round(100 * (1 - (q["agreement"] or 0)), 2)
            for k, q in quality.items()}
    chosen, why = pick_int8({k: {"accuracy_drop": drop[k], "latency_ratio": ratios[k]} for k in quality})
    basis = "accuracy drop" if labelled else "disagreement with FP32, % of texts (no labels)"
    return chosen, f"{why}; compared on {basis}"


def _candidate_rows(quality: dict, ratios: dict, paths: dict) -> dict:
    return {k: {"accuracy_drop": q["accuracy_drop"], "agreement": q["agreement"], "sqnr_db": q["sqnr_db"],
                "latency_ratio_1thread": round(ratios[k], 3), "size_bytes": paths[k].stat().st_size}
            for k, q in quality.items()}
