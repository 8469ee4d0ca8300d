"""Quantize stage: static INT8 with the calibration set, for every format the target asks for."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from ..context import Artifact, BuildContext


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice ("consider pre-processing") on the root logger; edgepack
    has already done that pre-processing, so the advice is noise on the user's terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


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
    with quiet_root_logger():
        ctx.records["quantization_onnx"] = quantize_onnx(
            ctx.get("onnx", "fp32").path, out, ctx.calib.x,
            method=calibration_method(ctx), per_channel=ctx.config.per_channel)
    ctx.add(Artifact("onnx", "int8", out))


def _tflite(ctx: BuildContext) -> None:
    """ONNX FP32 -> TFLite FP32 (the reference) and full-integer INT8 (what ships), same calibration set."""
    from ..backends import tflite

    fp32_onnx = ctx.get("onnx", "fp32").path
    workdir = ctx.workdir / "tflite"  # one workdir: the SavedModel is converted once for both
    ctx.progress("converting to TFLite FP32 (onnx2tf)", 0, 1)
    ctx.add(Artifact("tflite", "fp32", tflite.convert(fp32_onnx, workdir, None)))
    ctx.progress("converting to TFLite full-integer INT8 (calibrating)", 0, 1)
    int8 = tflite.convert(fp32_onnx, workdir, ctx.calib.x, io_dtype=ctx.target.tflite_io_dtype,
                          allow_float=ctx.config.allow_float_ops)
    ctx.add(Artifact("tflite", "int8", int8))
    floats = tflite.float_ops(int8)
    ctx.records["quantization_tflite"] = {"io_dtype": ctx.target.tflite_io_dtype, "float_ops": floats,
                                          "weights": "int8 per-channel", "activations": "int8 per-tensor",
                                          "converter": "tf.lite.TFLiteConverter (full-integer)"}
    if floats:
        ctx.warn(f"TFLite: {len(floats)} op(s) have no INT8 kernel and were kept in float "
                 f"(--allow-float-ops): {', '.join(floats[:8])}")
