"""Fold a constant scale and shift that follow a convolution into the convolution, with ONNX Runtime's own fusions.

Some networks put a learned scalar affine after their convolutions: PP-LCNetV3 (the PP-OCRv4 text detector's
backbone) has a "learnable affine block" ``s * x + t`` after 28 of them. Exported from Paddle the scalar comes
first and has shape (1,), and ONNX Runtime's ConvMulFusion / ConvAddFusion (its basic, hardware-independent graph
optimizations) take only a constant second input of shape () or (C, 1, 1) (its source: conv_mul_fusion.cc), so
nothing folds: every one of those Mul and Add nodes runs on a whole feature map, in FP32 and, quantized, as an
INT8 Mul/Add with its own requantization. ``fold`` rewrites only what those fusions need (the constant second,
broadcast to (C, 1, 1), a copy where another node shares it), then lets ONNX Runtime fuse and write the model.
The folded model is kept only if it computes the same outputs (checked on one input).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_AFFINE_OPS = ("Mul", "Add")
#: |folded - original| allowed, relative to max |original| per output (at least 0.01: a saturated sigmoid map
#: can peak at 1e-3), against float32 reassociation's ~1e-7 and a wrong fold's order-one error
PARITY_RTOL = 1e-4
_MAX_BYTES = 1 << 30   # ORT writes the optimized model as one protobuf (< 2 GB)


def fold(model):
    """(the model with every Conv -> Mul/Add-by-a-per-channel-constant chain folded into its Conv, how many
    Mul/Add nodes went); ``model`` itself and 0 when there is nothing to fold or the result is not the same
    function. ``model``: an onnx.ModelProto, not changed."""
    import onnx

    if model.ByteSize() > _MAX_BYTES:
        return model, 0
    candidate = onnx.ModelProto()
    candidate.CopyFrom(model)
    if not _canonicalize(candidate.graph):
        return model, 0
    try:
        folded = _ort_basic(candidate)
    except Exception as exc:  # noqa: BLE001 - folding is an optimisation; the model as it was still works
        log.warning("Conv scale/shift folding skipped (ONNX Runtime could not optimise the model: %s)", exc)
        return model, 0
    gone = len(model.graph.node) - len(folded.graph.node)
    if gone <= 0 or not _same_function(model, folded):
        return model, 0
    return folded, gone


def _canonicalize(graph) -> int:
    """Rewrite the constants of Conv -> (Mul | Add by a constant)* chains in place into the form ONNX Runtime's
    ConvMulFusion / ConvAddFusion take; return how many were rewritten."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    done, taken = 0, {t.name for t in graph.initializer} | set(producer)
    for node in graph.node:
        if node.op_type not in _AFFINE_OPS or len(node.input) != 2:
            continue
        consts = [i for i in node.input if i in inits]
        if len(consts) != 1:
            continue
        const = consts[0]
        x = node.input[1] if node.input[0] == const else node.input[0]
        conv = _chain_conv(x, producer, inits, readers, outputs)
        if conv is None:
            continue
        weight = numpy_helper.to_array(inits[conv.input[1]])
        if weight.ndim != 4:   # 2-D convolutions: (N, C, H, W) outputs
            continue
        value = numpy_helper.to_array(inits[const])
        channels = weight.shape[0]
        per_channel = _per_channel(value, channels)
        if per_channel is None or value.dtype != weight.dtype:
            continue
        name = const
        if readers.get(const, 0) > 1:   # shared with another node: that one keeps the original
            k = 0
            while f"{const}_c{k}" in taken:
                k += 1
            name = f"{const}_c{k}"
            taken.add(name)
            graph.initializer.append(numpy_helper.from_array(per_channel, name))
            inits[name] = graph.initializer[-1]
            readers[const] -= 1
            readers[name] = 1
        else:
            inits[const].CopyFrom(numpy_helper.from_array(per_channel, const))
        node.input[:] = [x, name]
        done += 1
    return done


def _chain_conv(x: str, producer: dict, inits: dict, readers: dict, outputs: set):
    """The Conv (weights and bias constant, one reader of its output) that ``x`` comes from through Mul/Add
    nodes by a constant each read only by the next; None otherwise."""
    while True:
        node = producer.get(x)
        if node is None or readers.get(x, 0) != 1 or x in outputs:
            return None
        if node.op_type == "Conv":
            ok = len(node.input) >= 2 and all(i in inits for i in node.input[1:] if i)
            return node if ok else None
        if node.op_type not in _AFFINE_OPS or sum(i in inits for i in node.input) != 1:
            return None
        x = next(i for i in node.input if i not in inits)


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as a (C, 1, 1) array when it broadcasts per output channel over an (N, C, H, W) output: a scalar
    of any rank, (C, 1, 1) or (1, C, 1, 1)."""
    if value.size == 1:
        return np.full((channels, 1, 1), value.reshape(()), value.dtype)
    if value.size == channels and value.shape in ((channels, 1, 1), (1, channels, 1, 1)):
        return value.reshape(channels, 1, 1).copy()
    return None


def _ort_basic(model):
    """``model`` after ONNX Runtime's basic (ONNX-standard, hardware-independent) graph optimizations."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgepack-fold-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(dst)
        opts.log_severity_level = 3
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        out = onnx.load(str(dst))
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


def _same_function(before, after) -> bool:
    """Both models on one seeded input give the same outputs within PARITY_RTOL (float inputs only)."""
    import onnxruntime as ort

    feeds = {}
    rng = np.random.default_rng(0)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sessions = [ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                    for m in (before, after)]
        for i in sessions[0].get_inputs():
            if i.type != "tensor(float)" or not all(isinstance(d, int) for d in i.shape):
                return False
            feeds[i.name] = rng.uniform(-1, 1, i.shape).astype(np.float32)
        outs = [s.run(None, feeds) for s in sessions]
    except Exception:  # noqa: BLE001 - not checkable here: keep the model as it was
        return False
    for a, b in zip(*outs, strict=True):
        scale = max(float(np.max(np.abs(a))), 1e-2)
        if a.shape != b.shape or float(np.max(np.abs(a - b))) > PARITY_RTOL * scale:
            return False
    return True
