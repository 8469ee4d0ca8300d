"""Checks on the model a user names, made before the slow stages, each ending in one clear InputError.

- ``check_onnx``: an ONNX file this onnxruntime can load: IR version and opset within what it supports
  (probed once: ``onnx`` may save newer files than ``onnxruntime`` reads), no custom-domain operators, at
  least one output, and a session that actually opens.
- ``check_image_input``: an image model's input is float32 (int64 / float16 inputs cannot take images).
- ``first_tensor``: what a torch forward returned (a tensor, or a tuple / list / dict of tensors) -> its first
  tensor; anything else is the model's error, not a crash later.
- ``check_output_rank``: the first output has a batch dimension (rank >= 1).
- (in edgepack.stages.export) ``check_finite_outputs``: the FP32 model's outputs on a few calibration samples
  are finite, so a model that always gives NaN stops in seconds instead of after the whole build.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from edgepack.errors import InputError

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def _probe_session(ir: int, opset: int) -> bool:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


@functools.cache
def runtime_limits() -> tuple[int, int]:
    """(highest IR version, highest default-domain opset) the installed onnxruntime loads, probed once."""
    import onnx

    ir = next((v for v in range(onnx.IR_VERSION, 2, -1) if _probe_session(v, 13)), 3)
    opset = next((v for v in range(onnx.defs.onnx_opset_version(), 6, -1) if _probe_session(ir, v)), 7)
    return ir, opset


def _runtime() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def check_onnx(model: Any, path: Path) -> None:
    """Refuse, with what to do, an ONNX model this onnxruntime cannot load (before onnx's own checker, whose
    messages about a too-new opset name an unrelated operator)."""
    max_ir, max_opset = runtime_limits()
    if model.ir_version > max_ir:
        raise InputError(f"{path.name} has ONNX IR version {model.ir_version}; {_runtime()} reads up to {max_ir}",
                         hint=f"re-save it for an older IR: m = onnx.load(p); m.ir_version = {max_ir}; "
                              "onnx.save(m, p) (or export with opset_version=17)")
    opsets = {o.domain: o.version for o in model.opset_import}
    default = max(opsets.get("", 0), opsets.get("ai.onnx", 0))
    if default > max_opset:
        raise InputError(f"{path.name} is stamped ONNX opset {default}; {_runtime()} supports opsets up to "
                         f"{max_opset}", hint="re-export with opset_version=17 (torch.onnx.export(..., "
                                              "opset_version=17))")
    custom = sorted({f"{n.domain}:{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    if custom:
        raise InputError(f"{path.name} uses operators from custom domains ({', '.join(custom[:5])}), which "
                         f"{_runtime()} cannot run without their library",
                         hint="export the model with standard ONNX operators only")
    if not model.graph.output:
        raise InputError(f"{path.name} has no graph outputs: there is nothing to quantize or validate",
                         hint="export the model with its output(s), e.g. output_names=['logits']")


def check_session(path: Path) -> None:
    """The model opens in onnxruntime; what it says when it does not becomes the user's error."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{_runtime()} cannot load {path.name}: {first[:300]}",
                         hint="re-export the model with standard operators at opset 13-21") from None


def check_image_input(path: Path) -> None:
    """An image model's single input must be float32."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in inits:
            continue
        elem = value.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            name = onnx.TensorProto.DataType.Name(elem).lower() if elem else "not a tensor"
            raise InputError(f"{path.name}: input '{value.name}' is {name}; image models take float32",
                             hint="export the model with a float32 input (cast inside the model if it needs "
                                  "another type)")


def first_tensor(y: Any, what: str = "the model's forward") -> Any:
    """The first tensor of a forward's result: a tensor, or the first of a tuple / list / dict of tensors."""
    import torch

    seen = y
    for _ in range(8):
        if isinstance(seen, torch.Tensor):
            return seen
        if isinstance(seen, dict) and seen:
            seen = next(iter(seen.values()))
        elif isinstance(seen, list | tuple) and seen:
            seen = seen[0]
        elif hasattr(seen, "to_tuple") and callable(seen.to_tuple):  # transformers ModelOutput
            seen = seen.to_tuple()
        else:
            break
    raise InputError(f"{what} returned {type(y).__name__}{' (empty)' if isinstance(y, dict | list | tuple) else ''}"
                     ", not a tensor", hint="return the output tensor (or a tuple / dict whose first item is it)")


def check_output_rank(shape: Any, where: str) -> None:
    """The first output needs a batch dimension: rank >= 1."""
    if shape is not None and len(shape) == 0:
        raise InputError(f"{where}: the first output is a scalar (rank 0); edgepack runs batch-1 inputs and needs "
                         "outputs shaped (1, ...)", hint="return y.unsqueeze(0) / keep the batch dimension")
