"""ONNX backend: export from torch, simplify with onnxslim, check parity, run with ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.backends import onnx_layout
from edgepack.backends.base import all_samples
from edgepack.errors import InputError, StageError

log = logging.getLogger(__name__)


def computed_at_load(node, constants: set[str]) -> bool:
    """Whether ``node`` reads constants only (``constants``: initializer names): ONNX Runtime computes it once, when
    the model is loaded (an INT8 file's bias scales as products), so it is no layer that runs per inference."""
    return bool(node.input) and all(i in constants for i in node.input)


def export(module: Any, input_shape: tuple[int, ...], path: Path, *, opset: int) -> None:
    """One float32 input named ``input`` of shape ``input_shape`` (images, reference networks): see export_args."""
    import torch

    export_args(module, (torch.zeros(*input_shape),), path, input_names=["input"], opset=opset)


def export_args(module: Any, args: tuple, path: Path, *, input_names: list[str], opset: int,
                hint: str | None = None, shape_flag: str = "--input-shape N,C,H,W") -> None:
    """torch.nn.Module -> one self-contained ONNX file with fixed input shapes (``args``: example tensors).

    The TorchScript-based exporter is used first: it is fast, deterministic and names nodes after
    the PyTorch modules (``/features/features.0/Conv``), which per-layer reports rely on. If it
    cannot trace the model, the torch.export-based exporter is tried.
    """
    import torch

    from edgepack.util import quiet_output

    output_names = names_of_outputs(check_accepts_input(module, args, shape_flag), input_names)
    with quiet_output():
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                                  input_names=input_names, output_names=output_names, do_constant_folding=True)
        except Exception as exc:  # the legacy exporter fails on data-dependent control flow
            from edgepack.guards.resources import reraise

            reraise(exc)  # a full disk or no memory is not a reason to try the other exporter
            log.info("legacy exporter failed (%s); trying the torch.export-based exporter", exc)
            _export_dynamo(module, args, path, opset, (input_names, output_names), hint)


def names_of_outputs(out: Any, input_names: list[str]) -> list[str]:
    """ONNX output names for a module's output: ``logits`` for one tensor, the keys of a dict of tensors
    (torchvision's segmentation models: ``out``, ``aux``), else ``output0``, ``output1``, ... Naming only the first
    output ``logits`` called MTCNN's box regression "logits" and its scores "28" in the manifest and budgets."""
    import torch

    if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()) and len(out) > 1:
        keys = [str(k).replace(":", "_") for k in out]  # TensorFlow reads "name:0" as a tensor of op "name": onnx2tf
        # dropped an output named "score:0", and the TFLite build failed as "onnx2tf dropped or split an output"
        if all(k and k not in input_names for k in keys) and len(set(keys)) == len(keys):
            return keys
    count = _count_tensors(out)
    if count <= 1 and isinstance(out, torch.Tensor) and not out.is_floating_point():
        return ["output0"]  # an integer tensor (an in-graph argmax's class map) is not logits
    return ["logits"] if count <= 1 else [f"output{i}" for i in range(count)]


def _count_tensors(out: Any) -> int:
    """Tensors in a (nested) tuple, list or dict output, as the exporter flattens it."""
    import torch

    if isinstance(out, torch.Tensor):
        return 1
    values = out.values() if isinstance(out, dict) else out if isinstance(out, list | tuple) else ()
    return sum(_count_tensors(v) for v in values)


def _export_dynamo(module: Any, args: tuple, path: Path, opset: int, names: tuple[list[str], list[str]],
                   hint: str | None) -> None:
    import torch

    input_names, output_names = names
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, dynamo=True, opset_version=opset,
                                        input_names=input_names, output_names=output_names)
            program.save(str(path), external_data=False)
    except Exception as exc:
        from edgepack.guards.resources import reraise

        reraise(exc)
        raise StageError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}",
                         hint=hint or "check the model runs under torch.export; run with --debug for the "
                                      "trace") from None


def check_accepts_input(module: Any, example: Any, shape_flag: str = "--input-shape N,C,H,W") -> Any:
    """Run the module once on a zero input (or a tuple of inputs, for text models); a shape error becomes an
    InputError naming the shape, a model in another float type than float32 (model.double()) one naming that."""
    import torch

    args = example if isinstance(example, tuple) else (example,)
    others, some_float32 = _weight_dtypes(module)
    if others and not some_float32:  # the whole model converted: refused even when its forward casts its input
        raise _not_float32(others, "the model is", None)
    try:
        with torch.no_grad():
            return module(*args)
    except Exception as exc:
        shapes = ", ".join(str(list(a.shape)) for a in args)
        said = str(exc).splitlines()[0][:200] if str(exc) else ""
        named = [d for d in others if any(w in said.lower() for w in _DTYPE_WORDS.get(d, (d,)))]
        if named:  # a mixed model whose error is about those dtypes ("... bias type (double) should be the same")
            raise _not_float32(named, "some of the model's weights are", f"{type(exc).__name__}: {said}") from None
        hint = f"pass the model's input shape with {shape_flag}"
        if isinstance(exc, TypeError) and "missing" in said and "positional argument" in said:
            hint = ("the model's forward takes several inputs: export it to ONNX with each input named, e.g. "
                    "torch.onnx.export(model, (a, b), 'model.onnx', input_names=['a', 'b'], dynamo=False), and "
                    "build the .onnx with --calib / --val .npz files holding one array per input name")
        raise InputError(f"the model does not accept input shape {shapes}: {type(exc).__name__}: {said}",
                         hint=hint) from None


#: how PyTorch's error messages spell a float dtype ("Input type (float) and bias type (double) ...")
_DTYPE_WORDS = {"float64": ("double", "float64"), "float16": ("half", "float16"), "bfloat16": ("bfloat16",)}


def _weight_dtypes(module: Any) -> tuple[list[str], bool]:
    """(the floating dtypes of a module's parameters and buffers other than float32, e.g. ["float64"] after
    model.double(); whether any is float32). ([], False) for a module that does not list its tensors."""
    found: set = set()
    for listing in ("parameters", "buffers"):
        tensors = getattr(module, listing, None)
        if callable(tensors):
            found |= {str(t.dtype).removeprefix("torch.") for t in tensors() if t.is_floating_point()}
    return sorted(found - {"float32"}), "float32" in found


def _not_float32(dtypes: list[str], whose: str, said: str | None) -> InputError:
    """The error for a model whose weights are ``dtypes`` (not float32), with PyTorch's own message ``said``."""
    return InputError(f"{whose} {' and '.join(dtypes)}, not float32: edgepack exports, calibrates and validates it "
                      "on float32 inputs, as the INT8 formats take them" + (f" ({said})" if said else ""),
                      hint="convert the model to float32 first: model.float() (or model.to(torch.float32)) in the "
                           "factory or before saving it")


#: the lowest opset whose DequantizeLinear takes an ``axis`` (per-channel INT8 weights need it)
MIN_QDQ_OPSET = 13


def prepare_source(src: Path, dst: Path, *, input_shape: tuple[int, ...], opset: int,
                   input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    """A user's ONNX file made ready for INT8: symbolic input dimensions pinned to ``input_shape`` (the build's
    --input-shape; dynamic NCHW detectors such as PP-OCR's DBNet have them), or for several inputs to
    ``input_shapes`` by name (batch 1 where it does not say), an NHWC image input made NCHW (onnx_layout), and
    an opset below MIN_QDQ_OPSET converted up to ``opset`` (the profile's). Returns what was changed, for the
    manifest."""
    import onnx
    import onnx.version_converter

    model = onnx.load(str(src))
    done: dict = {"pinned_dims": [], "opset_from": None, "opset_to": None}
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    first = _describe(inputs[:1], set())
    if len(inputs) == 1 and not input_shapes and onnx_layout.fed_nchw(first[0], input_shape):
        # an NHWC image input (tf2onnx) the build feeds NCHW (photos): made NCHW
        done["input_layout_from"] = {"layout": "NHWC", "shape": onnx_layout.front_transpose(model, inputs[0])}
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 and not input_shapes else []
    if len(dims) == len(input_shape):
        for i, (d, want) in enumerate(zip(dims, input_shape, strict=True)):
            if not d.HasField("dim_value") or d.dim_value <= 0:
                d.dim_value = int(want)   # assigning dim_value clears dim_param (a oneof)
                done["pinned_dims"].append(i)
            elif d.dim_value != int(want):
                done.setdefault("fixed_dims_differ", []).append([i, int(d.dim_value), int(want)])
    if len(inputs) > 1 or input_shapes:  # by input name (inputs.kinds.TensorsInput); a batch dimension is 1
        for inp in inputs:
            dims = inp.type.tensor_type.shape.dim
            want = (input_shapes or {}).get(inp.name) or (1,)
            for i, d in enumerate(dims):
                if (not d.HasField("dim_value") or d.dim_value <= 0) and (i == 0 or i < len(want)):
                    d.dim_value = int(want[i]) if i < len(want) else 1
                    done["pinned_dims"].append(f"{inp.name}:{i}")
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is not None and current < MIN_QDQ_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, max(opset, MIN_QDQ_OPSET))
        except Exception as exc:  # noqa: BLE001 (the converter raises bare RuntimeErrors and ValidationErrors)
            raise InputError(f"the ONNX model's opset {current} is too old for INT8 (per-channel QDQ needs "
                             f">= {MIN_QDQ_OPSET}) and converting it failed: {str(exc)[:200]}",
                             hint="convert the model to opset 13 or later (onnx.version_converter) first") from None
        done["opset_from"], done["opset_to"] = current, max(opset, MIN_QDQ_OPSET)
    onnx.save(model, str(dst))
    return done


def simplify(src: Path, dst: Path) -> dict:
    """Fold constants and padding with onnxslim (Pad ops from "same" padding cost INT8 speed), then a constant
    scale/shift after a convolution into the convolution (`onnx_fold`: ONNX Runtime's own Conv+Mul / Conv+Add
    fusions, which the exported form of such constants escapes), and a scalar scale/shift that only convolutions
    read into those (`onnx_fold.fold_forward`)."""
    import onnx
    import onnxslim

    from edgepack.backends import onnx_fold

    model = onnx.load(str(src))
    before = len(model.graph.node)
    with contextlib.redirect_stdout(io.StringIO()):
        slim = onnxslim.slim(model)
    slim, folded = onnx_fold.fold(slim)
    slim, forward = onnx_fold.fold_forward(slim, keep_hard_swish=True)
    onnx.save(slim, str(dst))
    return {"nodes_before": before, "nodes_after": len(slim.graph.node),
            **({"affine_folded_into_conv": folded} if folded else {}),
            **({"affine_folded_forward": forward} if forward else {})}


#: ONNX metadata an INT8 model carries (edgepack.backends.onnx_quantize.int8_plan): the arithmetic that validates
#: it ("reference" or "native") and the ISA of the device it is for ("aarch64", "x86_64")
ARITHMETIC_KEY = "edgepack.int8_arithmetic"
TARGET_ARCH_KEY = "edgepack.target_arch"


def host_arch() -> str:
    import platform

    machine = platform.machine().lower()
    return "x86_64" if machine in ("x86_64", "amd64") else "aarch64" if machine in ("aarch64", "arm64") else machine


def model_arithmetic(path: Path) -> str:
    """How this host runs an ONNX model: "reference" when the model asks for it (ARITHMETIC_KEY) and this host is
    not of the device's ISA (TARGET_ARCH_KEY); else "native" (on its own device a model runs its own kernels)."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # noqa: BLE001 (ORT says what is wrong with the file when it loads it)
        return "native"
    if props.get(ARITHMETIC_KEY) == "reference" and props.get(TARGET_ARCH_KEY) != host_arch():
        return "reference"
    return "native"


def session(path: Path, threads: int, arithmetic: str = "native", optimized_path: Path | None = None) -> Any:
    """An ORT CPU session configured as on the device: ``threads`` intra-op threads, sequential.

    ``arithmetic``: "native" runs ORT's fused INT8 kernels for this host; "reference" keeps QDQ pairs unfused
    (ORT's session.disable_quant_qdq: exact integer products in float, no int16 saturation), which is what an
    ARM device's kernels compute. ``optimized_path``: where ORT writes the graph it runs (for checks).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if arithmetic == "reference":
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise StageError(f"ONNX Runtime cannot load {path.name}: {str(exc)[:300]}") from None


class Runner:
    """Runs an ONNX model one sample at a time; returns float32 outputs.

    Input: an NCHW float32 array for a one-input model, or {input name: array} for a model with several
    (text models: int64 token arrays), each cast to the dtype the model declares.
    """

    def __init__(self, path: Path, threads: int = 1, arithmetic: str | None = None):
        #: "reference" or "native": None follows the model's metadata (see session)
        self.arithmetic = arithmetic or model_arithmetic(Path(path))
        self.session = session(path, threads, self.arithmetic)
        inputs = self.session.get_inputs()
        self.dtypes = {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in inputs}
        self.input_name = inputs[0].name
        self.input_shape = [d if isinstance(d, int) else 1 for d in inputs[0].shape]

    def run(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run(None, self._feed(x))[0]
        return np.asarray(out, dtype=np.float32)

    def run_outputs(self, x: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output of one run, as float32 (a model may have several; ``run`` returns the first)."""
        return [np.asarray(o, dtype=np.float32) for o in self.session.run(None, self._feed(x))]

    def timed(self, x: np.ndarray | dict[str, np.ndarray]) -> Callable[[], None]:
        """A call that runs the model on ``x`` (fed once, here), for latency (see the TFLite runner's)."""
        feed, run = self._feed(x), self.session.run
        return lambda: run(None, feed)

    def _feed(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(x, dict):
            if len(self.dtypes) != 1:
                raise InputError(f"the model has {len(self.dtypes)} inputs ({', '.join(self.dtypes)}) but was "
                                 "given one array", hint="text models are built from a text source")
            x = {self.input_name: x}
        missing = [n for n in self.dtypes if n not in x]
        if missing:
            raise InputError(f"no data for model input(s) {', '.join(missing)}",
                             hint="the tokenizer's input names must match the model's")
        return {n: x[n].astype(t, copy=False) for n, t in self.dtypes.items()}

    def run_samples(self, x: np.ndarray | dict[str, np.ndarray], progress=None,
                    all_outputs: bool = False) -> np.ndarray | list[np.ndarray]:
        """First output for every sample of x (N, ...), batch 1 as on the device; with ``all_outputs``, every
        output so stacked, in a list."""
        if all_outputs:
            return all_samples(self, x, progress)
        from edgepack.inputs.data import num_samples, rows

        n = num_samples(x)
        outs = []
        for i in range(n):
            if progress and i % 16 == 0:
                progress(i, n)
            outs.append(self.run(rows(x, i, i + 1))[0])
        return np.stack(outs)


def append_reduce(graph, opset: int, op: str, x: str, axes: list[int] | None, out: str) -> str:
    """Append a Reduce* node (ReduceMin, ReduceMax, ReduceMean; axes None = all; keepdims 0) to ``graph``,
    opset-aware (axes an input from opset 18, an attribute before); return its output name. Statistics reduced
    inside the graph keep a calibration pass's memory at a few vectors per sample, not whole activations."""
    from onnx import helper, numpy_helper

    inputs = [x]
    attrs = {"keepdims": 0}
    if axes is not None and opset >= 18:
        graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), out + "_axes"))
        inputs.append(out + "_axes")
    elif axes is not None:
        attrs["axes"] = axes
    graph.node.append(helper.make_node(op, inputs, [out], **attrs))
    return out


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
               "tensor(float16)": np.float16, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def io_details(path: Path) -> dict:
    """Inputs and outputs of an ONNX model for the manifest (float I/O: quantization is internal)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    return {"inputs": _describe(model.graph.input, init), "outputs": _describe(model.graph.output, init)}


def _describe(values: Any, init: set[str]) -> list[dict]:
    """Name, shape (ints; names for symbolic dimensions), numpy dtype name of graph inputs or outputs, bar
    initializers (``init``)."""
    import onnx

    rows = []
    for v in values:
        if v.name in init:
            continue
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        rows.append({"name": v.name, "shape": shape,
                     "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                     "layout": "NCHW" if len(shape) == 4 else None, "quantization": None})
    return rows


def input_shape(path: Path) -> tuple[int, ...] | None:
    """The fixed input shape of an ONNX model, with a symbolic batch dimension taken as 1 (what
    `torch.onnx.export(dynamic_axes={"input": {0: "batch"}})` writes: the file still fixes C, H and W, which
    the build must use, not the profile's 224 px); None when another dimension is symbolic."""
    shape = list(io_details(path)["inputs"][0]["shape"])
    if len(shape) > 1 and not (isinstance(shape[0], int) and shape[0] > 0):
        shape[0] = 1
    return tuple(shape) if all(isinstance(d, int) and d > 0 for d in shape) else None


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """How closely two float outputs agree: max abs diff, relative to the reference's range."""
    diff = float(np.max(np.abs(reference - candidate)))
    scale = float(np.max(np.abs(reference))) or 1.0
    return {"max_abs_diff": diff, "relative": diff / scale}


def float_ops(path: Path) -> list[str]:
    """Compute ops (Conv, MatMul, Gemm) of a QDQ model whose input is not dequantized INT8: they run in float."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    return [f"{n.op_type}:{n.name}" for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")
            and getattr(producer.get(n.input[0]), "op_type", None) != "DequantizeLinear"]
