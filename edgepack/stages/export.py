"""Export stage: torch -> ONNX (one file), simplified with onnxslim, checked against torch outputs.

The input kind (ctx.inputs) gives the example inputs, their names and the opset (text models need opset 20
for TFLite targets: see edgepack.inputs.kinds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgepack.backends import onnx as onnx_backend
from edgepack.backends import onnx_layout
from edgepack.errors import InputError, StageError
from edgepack.inputs.kinds import TFLITE_TEXT_OPSET
from edgepack.inputs.model_checks import first_tensor
from edgepack.stages.context import Artifact, BuildContext

PARITY_SAMPLES = 4
FINITE_CHECK_SAMPLES = 4   # FP32 outputs checked for NaN/inf right after export
PARITY_RTOL = 1e-3   # max |torch - onnx| relative to max |torch|; FP32 export should be ~1e-6


def run(ctx: BuildContext) -> None:
    raw = ctx.workdir / "model_fp32_raw.onnx"
    final = ctx.workdir / "model_fp32.onnx"
    if ctx.model.kind == "onnx":  # dynamic dims pinned, an old opset converted (per-channel QDQ needs 13)
        ctx.records["onnx_source"] = onnx_backend.prepare_source(ctx.model.onnx_path, raw,
                                                                 input_shape=ctx.input_shape, opset=ctx.target.opset,
                                                                 input_shapes=ctx.inputs.source_shapes())
        _say_transposed(ctx)
        differ = ctx.records["onnx_source"].pop("fixed_dims_differ", None)
        if differ and ctx.config.input_shape:
            fixed = ", ".join(f"dimension {i} is {have} (asked {want})" for i, have, want in differ)
            raise InputError(f"--input-shape {','.join(map(str, ctx.input_shape))} does not fit "
                             f"{ctx.model.onnx_path.name}: its input's {fixed}",
                             hint="pass the shape the model was exported at; only its dynamic dimensions can "
                                  "be chosen")
    else:
        ctx.progress("exporting to ONNX", 0, 1)
        _export(ctx, ctx.model.module, raw)
    _flatten_scores(ctx, raw)
    guessed = _pinned_to_the_profile(ctx)
    try:
        ctx.progress("simplifying (onnxslim)", 0, 1)
        ctx.records["simplify"] = onnx_backend.simplify(raw, final)
        check_finite_outputs(final, ctx.calib.x)  # a model that always gives NaN stops here, not after the build
    except StageError as exc:
        if not guessed:
            raise
        raise InputError(exc.message, hint=f"{guessed}: pass the shape it runs at, {ctx.inputs.shape_flag}") from None
    ctx.add(Artifact("onnx", "fp32", final))
    _say_copied_outputs(ctx, final)
    if ctx.model.kind == "torch":
        ctx.records["export_parity"] = check_parity(ctx, final)
    if ctx.unpruned is not None:  # the report compares against the model before pruning
        raw_u, final_u = ctx.workdir / "model_unpruned_raw.onnx", ctx.workdir / "model_unpruned_fp32.onnx"
        ctx.progress("exporting the unpruned model for comparison", 0, 1)
        _export(ctx, ctx.unpruned.module, raw_u)
        if ctx.task.name == "classify":
            onnx_layout.flatten_scores(raw_u)
        onnx_backend.simplify(raw_u, final_u)
        ctx.add(Artifact("onnx", "unpruned-fp32", final_u))


def _flatten_scores(ctx: BuildContext, raw: Path) -> None:
    """A classifier's (N, C, 1, 1) scores flattened to (N, C) (backends.onnx_layout), said in a warning."""
    if ctx.task.name != "classify":
        return
    before = onnx_layout.flatten_scores(raw)
    if before:
        ctx.records["scores_flattened_from"] = before
        ctx.warn(f"the model's class scores are {before}; the bundle's model gives them as [{before[0]}, {before[1]}] "
                 "(a Flatten after the graph), as validation and run.py read them")


def _say_transposed(ctx: BuildContext) -> None:
    """A warning when an ONNX source's NHWC image input was made NCHW (backends.onnx_layout) and an .onnx ships: its
    input is not the file's (a .tflite is NHWC whatever its source)."""
    was = ctx.records["onnx_source"].get("input_layout_from")
    if was and "onnx" in ctx.target.formats:
        ctx.warn(f"{ctx.model.onnx_path.name} takes its image channels-last (NHWC {was['shape']}); the bundle's "
                 f"model.onnx takes it channels-first (NCHW {list(ctx.input_shape)}), as run.py feeds it: a "
                 "Transpose was put in front of the graph (in your own code, transpose pixels with (0, 3, 1, 2))")


def _pinned_to_the_profile(ctx: BuildContext) -> str | None:
    """A warning, when an ONNX source's dynamic input dimensions were pinned to the profile's input shape (no
    --input-shape): a PP-OCR recogniser (N, 3, ?, W) pinned to 224 x 224 cannot load, and failed (exit 4) with
    onnxruntime's shape-inference message alone."""
    every = (ctx.records.get("onnx_source") or {}).get("pinned_dims") or []
    named = [d for d in every if isinstance(d, str) and not d.endswith(":0")]  # by input name, from the .npz
    if named:
        said, guessed = ctx.inputs.pinned_by_name(ctx.model.onnx_path.name, named)
        ctx.warn(said)
        if guessed:
            return guessed
    pinned = [d for d in every if isinstance(d, int) and d != 0]  # a batch dimension is 1 whatever the shape
    if not pinned or ctx.config.input_shape:
        return None
    said = (f"{ctx.model.onnx_path.name} has dynamic input dimensions {pinned}, pinned to the profile's input "
            f"shape {list(ctx.input_shape)}")
    ctx.warn(said + "; pass --input-shape for the size it runs at")
    return said


def _export(ctx: BuildContext, module, raw) -> None:
    # torch.onnx.export restores the module's training flag afterwards: a wrapper left in training mode would
    # switch dropout on in every later torch call (the parity check, reconstruction, fine-tuning's teacher)
    try:
        module.eval()
    except NotImplementedError:  # a torch.export program (.pt2): no train/eval switch, captured as it will run
        pass
    import onnx

    settings = ctx.inputs.export_settings()
    onnx_backend.export_args(module, ctx.inputs.example_args(ctx.input_shape), raw, **settings)
    exported = onnx.load(str(raw), load_external_data=False)  # its structure only: the checks below read no weights
    if _gelu_as_erf(ctx, exported, settings["opset"]):  # a functional F.gelu, which uses_gelu cannot see in the modules
        settings = {**settings, "opset": TFLITE_TEXT_OPSET}
        onnx_backend.export_args(module, ctx.inputs.example_args(ctx.input_shape), raw, **settings)
        exported = onnx.load(str(raw), load_external_data=False)
    _check_every_input_is_used(exported, settings["input_names"], ctx.model.name)
    opset = _opset_of(exported)  # the torch.export exporter keeps 18 when it cannot convert down to what was asked
    ctx.records["export"] = {"inputs": settings["input_names"], "opset": opset,
                             **({"opset_asked": settings["opset"]} if opset != settings["opset"] else {}),
                             "input_shape": list(ctx.input_shape)}
    if opset is not None and opset != settings["opset"]:
        ctx.warn(f"the ONNX exporter wrote opset {opset}, not the {settings['opset']} asked for (it could not "
                 "convert this model down); the device's ONNX Runtime must support it")


def _say_copied_outputs(ctx: BuildContext, path) -> None:
    """A warning for each output that is a plain copy of another (a model returning the same tensor twice): a
    .tflite keeps one tensor for both (onnx2tf drops the copy); its manifest says so (stages.bundle.shared_tensors)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    outputs = [o.name for o in graph.output]
    copies = [(n.output[0], n.input[0]) for n in graph.node
              if n.op_type == "Identity" and n.output and n.output[0] in outputs and n.input[0] in outputs]
    for copy, of in copies:
        more = ("; a .tflite holds one tensor for both (the manifest's outputs: shares_tensor_with)"
                if "tflite" in ctx.target.formats else "")
        ctx.warn(f"output '{copy}' is a copy of output '{of}' (the model returns the same tensor twice): it is "
                 f"judged once{more}")


def _opset_of(model) -> int | None:
    """The default-domain opset the ONNX ``model`` declares."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _gelu_as_erf(ctx: BuildContext, model, opset: int) -> bool:
    """Whether a TFLite build's export spelled GELU with Erf, which the TFLite converter refuses (a raw MLIR
    'tf.Erf' error, exit 4): below opset 20 the exporter writes GELU so; at 20 it writes the Gelu op."""
    if "tflite" not in ctx.target.formats or opset >= TFLITE_TEXT_OPSET:
        return False
    return any(n.op_type == "Erf" for n in model.graph.node)


def _check_every_input_is_used(model, names: list[str], source: str) -> None:
    """The exporter leaves out a forward argument the model never reads; every feed of it then failed inside
    onnxruntime ("Invalid input name: meta", exit 70)."""
    kept = {i.name for i in model.graph.input}
    unused = [n for n in names if n not in kept]
    if unused:
        raise InputError(f"{source}'s forward never uses its input(s) {', '.join(unused)}: the exported model has no "
                         "such input, so edgepack cannot feed it as given",
                         hint="remove the argument from forward (or use it); edgepack builds the model as it runs")


def _torch_outputs(ctx: BuildContext, x) -> np.ndarray:
    """The torch model's outputs, one sample at a time."""
    import torch

    from edgepack.inputs.data import num_samples, rows

    outs = []
    with torch.no_grad():
        for i in range(num_samples(x)):
            outs.append(first_tensor(ctx.model.module(*ctx.inputs.torch_args(rows(x, i, i + 1)))).numpy()[0])
    return np.stack(outs)


def check_parity(ctx: BuildContext, path) -> dict:
    """FP32 ONNX must reproduce the torch outputs on real samples, or the build stops."""
    from edgepack.inputs.data import rows

    x = rows(ctx.calib.x, 0, PARITY_SAMPLES)
    ref = _torch_outputs(ctx, x)
    got = onnx_backend.Runner(path, threads=1).run_samples(x)
    if ref.shape != got.shape and ref.size == got.size:  # (N, C, 1, 1) scores, flattened by _flatten_scores
        ref = ref.reshape(got.shape)
    result = onnx_backend.parity(ref, got)
    result["tolerance_relative"] = PARITY_RTOL
    result["samples"] = len(ref)
    if result["relative"] > PARITY_RTOL:
        raise StageError(f"the exported ONNX model differs from PyTorch: max abs diff {result['max_abs_diff']:.3g} "
                         f"({result['relative']:.2%} of the output range, tolerance {PARITY_RTOL:.1%})",
                         hint="the model may behave differently in eval/trace mode; run with --debug")
    return result



def check_finite_outputs(path: Path, x: Any) -> None:
    """The FP32 ONNX model gives finite outputs on the first few calibration samples."""
    from edgepack.inputs.data import num_samples, rows

    runner = onnx_backend.Runner(path, threads=1)
    names = [o.name for o in runner.session.get_outputs()]
    for i in range(min(FINITE_CHECK_SAMPLES, num_samples(x))):
        try:
            outs = runner.run_outputs(rows(x, i, i + 1))
        except Exception as exc:  # onnxruntime's own errors (a Reshape that cannot take this input size): exit 4
            from edgepack.guards.resources import reraise

            reraise(exc)
            raise StageError(f"the FP32 ONNX model fails on calibration sample {i}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300]}",
                             hint="check that the model takes the input shape and preprocessing given") from None
        for name, out in zip(names, outs, strict=True):
            if not np.isfinite(out).all():
                raise InputError(f"the FP32 model's output '{name}' is NaN or infinite on calibration sample {i}: "
                                 "INT8 cannot represent it and nothing could be validated",
                                 hint="check the model (a division by zero, log of 0, untrained weights) and the "
                                      "preprocessing of the data")
