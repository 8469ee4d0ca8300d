"""Quantize stage: static INT8 with the calibration set, for every format the target asks for."""

from __future__ import annotations

from ..context import Artifact, BuildContext


def run(ctx: BuildContext) -> None:
    if "onnx" in ctx.target.formats:
        _onnx(ctx)
    if "tflite" in ctx.target.formats:
        _tflite(ctx)


def calibration_method(ctx: BuildContext) -> str:
    return ctx.config.calibration_method or ctx.target.calibration_method


def _onnx(ctx: BuildContext) -> None:
    from ..backends.onnx_quantize import quantize_onnx

    ctx.progress("quantizing ONNX to INT8 (calibrating)", 0, 1)
    out = ctx.workdir / "model_int8.onnx"
    ctx.records["quantization_onnx"] = quantize_onnx(
        ctx.get("onnx", "fp32").path, out, ctx.calib.x,
        method=calibration_method(ctx), per_channel=ctx.config.per_channel)
    ctx.add(Artifact("onnx", "int8", out))


def _tflite(ctx: BuildContext) -> None:
    from ..backends import tflite

    fp32_onnx = ctx.get("onnx", "fp32").path
    ctx.progress("converting to TFLite FP32", 0, 1)
    fp32 = tflite.convert(fp32_onnx, ctx.workdir / "tflite_fp32", None)
    ctx.add(Artifact("tflite", "fp32", fp32))
    ctx.progress("converting to TFLite full-integer INT8", 0, 1)
    int8 = tflite.convert(fp32_onnx, ctx.workdir / "tflite_int8", ctx.calib.x, io_dtype=ctx.target.tflite_io_dtype)
    ctx.add(Artifact("tflite", "int8", int8))
    floats = tflite.float_ops(int8)
    ctx.records["quantization_tflite"] = {"io_dtype": ctx.target.tflite_io_dtype, "float_ops": floats}
    if floats:
        ctx.warn(f"TFLite: {len(floats)} op(s) run in float in the INT8 model: {', '.join(floats[:8])}")
