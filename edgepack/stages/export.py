"""Export stage: torch -> ONNX (one file), simplified with onnxslim, checked against torch outputs.

Text models export with fixed (1, max_length) int64 token inputs (edgepack.text.export_text_onnx), at opset
TFLITE_TEXT_OPSET or later when the target ships TFLite: below opset 20 GELU exports as Erf, which the TFLite
converter has no builtin for ("'tf.Erf' op is neither a custom op nor a flex op"); opset 20 has one Gelu op."""

from __future__ import annotations

import shutil

import numpy as np

from ..backends import onnx as onnx_backend
from ..context import Artifact, BuildContext
from ..errors import StageError
from ..model_checks import check_finite_outputs, first_tensor

PARITY_SAMPLES = 4
PARITY_RTOL = 1e-3   # max |torch - onnx| relative to max |torch|; FP32 export should be ~1e-6
TFLITE_TEXT_OPSET = 20


def run(ctx: BuildContext) -> None:
    raw = ctx.workdir / "model_fp32_raw.onnx"
    final = ctx.workdir / "model_fp32.onnx"
    if ctx.model.kind == "onnx":
        shutil.copyfile(ctx.model.onnx_path, raw)
    else:
        ctx.progress("exporting to ONNX", 0, 1)
        _export(ctx, ctx.model.module, raw)
    ctx.progress("simplifying (onnxslim)", 0, 1)
    ctx.records["simplify"] = onnx_backend.simplify(raw, final)
    check_finite_outputs(final, ctx.calib.x)  # a model that always gives NaN stops here, not after the build
    ctx.add(Artifact("onnx", "fp32", final))
    if ctx.model.kind == "torch":
        ctx.records["export_parity"] = check_parity(ctx, final)
    if ctx.unpruned is not None:  # the report compares against the model before pruning
        raw_u, final_u = ctx.workdir / "model_unpruned_raw.onnx", ctx.workdir / "model_unpruned_fp32.onnx"
        ctx.progress("exporting the unpruned model for comparison", 0, 1)
        _export(ctx, ctx.unpruned.module, raw_u)
        onnx_backend.simplify(raw_u, final_u)
        ctx.add(Artifact("onnx", "unpruned-fp32", final_u))


def _export(ctx: BuildContext, module, raw) -> None:
    text = ctx.model.text
    if text is None:
        onnx_backend.export(module, ctx.input_shape, raw, opset=ctx.target.opset)
        return
    from .. import text as text_mod

    opset = ctx.target.opset
    if "tflite" in ctx.target.formats:
        opset = max(opset, TFLITE_TEXT_OPSET)
    ctx.records["text_export"] = text_mod.export_text_onnx(module, text.max_length, raw,
                                                           opset=opset, input_names=text.input_names)


def _torch_outputs(ctx: BuildContext, x) -> np.ndarray:
    """The torch model's outputs, one sample at a time: x is an array, or token arrays by input name."""
    import torch

    from ..data import num_samples, rows

    names = ctx.model.text.input_names if ctx.model.text is not None else None
    outs = []
    with torch.no_grad():
        for i in range(num_samples(x)):
            sample = rows(x, i, i + 1)
            args = [torch.from_numpy(sample[n]) for n in names] if names else [torch.from_numpy(sample)]
            outs.append(first_tensor(ctx.model.module(*args)).numpy()[0])
    return np.stack(outs)


def check_parity(ctx: BuildContext, path) -> dict:
    """FP32 ONNX must reproduce the torch outputs on real samples, or the build stops."""
    from ..data import rows

    x = rows(ctx.calib.x, 0, PARITY_SAMPLES)
    ref = _torch_outputs(ctx, x)
    got = onnx_backend.Runner(path, threads=1).run_samples(x)
    result = onnx_backend.parity(ref, got)
    result["tolerance_relative"] = PARITY_RTOL
    result["samples"] = len(ref)
    if result["relative"] > PARITY_RTOL:
        raise StageError(f"the exported ONNX model differs from PyTorch: max abs diff {result['max_abs_diff']:.3g} "
                         f"({result['relative']:.2%} of the output range, tolerance {PARITY_RTOL:.1%})",
                         hint="the model may behave differently in eval/trace mode; run with --debug")
    return result
