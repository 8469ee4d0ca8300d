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


def fold_forward(model, keep_hard_swish: bool = False):
    """(the model with every scalar Mul / Add by a constant that only convolutions read folded into those
    convolutions, how many nodes went); ``model`` itself and 0 when nothing folds or the result is not the same
    function. ``model``: an onnx.ModelProto, not changed.

    The other half of PP-LCNetV3's learnable affine blocks: after a hard-swish or a ReLU, ``s * x + t`` cannot go
    into the convolution before it (the activation is between), but it can go into the one after:
    ``conv(s * x) = conv_{s W}(x)`` exactly, zero padding included, and ``conv(x + t) = conv(x) + t * sum(W)``
    when the convolution pads nothing. When ``x + t`` feeds a padded convolution, ``s * x + t`` is rewritten
    ``s * (x + t / s)`` and the scale still goes into the weights; only the Add stays. Each node that goes is one
    feature-map pass less in float and one requantization and one rounding less in INT8. A scale also goes
    through pooling, reshapes, ReLU and products with other tensors to the convolutions beyond
    (`_absorbing_convs`): the 1/6 of hard-swish and hard-sigmoid as edgepack's INT8 copy spells them.
    ``keep_hard_swish``: the ``/ 6`` ending an exported ``x * clip(x + 3, 0, 6) / 6`` stays, so that converters
    still fuse it into one hard-swish op (how the FP32 model is simplified).
    """
    import onnx

    if model.ByteSize() > _MAX_BYTES:
        return model, 0
    candidate = onnx.ModelProto()
    candidate.CopyFrom(model)
    gone = _fold_forward(candidate.graph, keep_hard_swish)
    if not gone or not _same_function(model, candidate):
        return model, 0
    return candidate, gone


def _fold_forward(graph, keep_hard_swish: bool) -> int:
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    gone = 0
    while True:   # one rewrite per pass over the graph, until none applies
        readers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        shared = {name for name, nodes in readers.items() if len(nodes) > 1}
        kept = _hard_swish_ends(graph, inits, readers) if keep_hard_swish else set()
        for node in list(graph.node):
            if node.output[0] in kept:
                continue
            step = _fold_step(graph, node, inits, readers, shared, outputs)
            if step:
                gone += step == "gone"
                break
        else:
            break
    read = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in read and t.name not in outputs]:
        graph.initializer.remove(t)
    return gone


def _hard_swish_ends(graph, inits: dict, readers: dict) -> set:
    """Outputs of the Div / Mul nodes that end an ``x * clip(x + 3, 0, 6) / 6`` hard-swish: converters fuse the
    whole pattern into one op (TFLite's HARD_SWISH), which they no longer recognise once the 1/6 is folded away."""
    from onnx import numpy_helper

    producer = {o: n for n in graph.node for o in n.output}
    consts = {name: numpy_helper.to_array(t) for name, t in inits.items() if int(np.prod(t.dims)) == 1}
    uses = {name: len(nodes) for name, nodes in readers.items()}
    return {n.output[0] for n in graph.node if n.op_type in ("Mul", "Div")
            and hard_swish_pattern(n, producer, consts, uses) is not None}


def _fold_step(graph, node, inits: dict, readers: dict, shared: set, outputs: set) -> str | None:
    """Fold ``node`` (a scalar Mul/Add) into the convolutions reading it ("gone"), or move a Mul after the Add
    reading it ("swapped"); None when neither applies."""
    from onnx import numpy_helper

    scalar = _scalar_operand(node, inits)
    if scalar is None:
        return None
    x, value = scalar
    out = node.output[0]
    users = readers.get(out, [])
    if not users or out in outputs:
        return None
    convs = all(_plain_conv(u, out, inits, shared) for u in users)
    scale = node.op_type in ("Mul", "Div")
    leaves = _absorbing_convs(out, value, readers, inits, shared, outputs) if scale else None
    if leaves is not None:
        for conv in leaves:
            w = numpy_helper.to_array(inits[conv.input[1]])
            inits[conv.input[1]].CopyFrom(numpy_helper.from_array((w * value).astype(w.dtype), conv.input[1]))
    elif node.op_type == "Add" and convs and all(_unpadded(u) for u in users):
        for conv in users:
            w = numpy_helper.to_array(inits[conv.input[1]])
            _add_bias(graph, conv, (value * w.reshape(w.shape[0], -1).sum(axis=1)).astype(w.dtype), inits)
    elif scale and value != 0 and len(users) == 1 and users[0].op_type == "Add":
        return "swapped" if _swap_mul_add(graph, node, users[0], x, value, inits, shared, outputs) else None
    else:
        return None
    for user in users:
        user.input[:] = [x if i == out else i for i in user.input]
    graph.node.remove(node)
    return "gone"


#: ops through which a scale c on their (first) input comes out as the same scale on their output
_HOMOGENEOUS = frozenset({"GlobalAveragePool", "AveragePool", "ReduceMean", "Identity", "Flatten", "Reshape",
                          "Squeeze", "Unsqueeze", "Transpose", "DepthToSpace", "SpaceToDepth"})
_POSITIVE_HOMOGENEOUS = frozenset({"Relu", "MaxPool", "GlobalMaxPool"})   # ... when c > 0


def _absorbing_convs(t: str, c: float, readers: dict, inits: dict, shared: set, outputs: set) -> list | None:
    """The convolutions whose weights can absorb a scale ``c`` on tensor ``t`` so that ``t`` can go unscaled: every
    path from ``t`` runs through ops that pass a scale on (pooling, reshapes, ReLU when c > 0, a Mul by another
    tensor) and ends at a convolution's data input (``conv(c x) = conv_{c W}(x)``); None when some path ends
    elsewhere (a graph output, an Add, a Concat...) or two scaled tensors meet (a Mul of two: c squared).
    In MobileNetV3 and PP-LCNet this takes the 1/6 of every hard-swish and hard-sigmoid through the
    squeeze-excitation product into the next convolutions."""
    scaled, leaves, frontier = {t}, [], [t]
    while frontier:
        tensor = frontier.pop()
        users = readers.get(tensor, [])
        if not users or tensor in outputs:
            return None
        for u in users:
            if _plain_conv(u, tensor, inits, shared):
                if not any(u is leaf for leaf in leaves):
                    leaves.append(u)
                continue
            passes = (u.op_type in _HOMOGENEOUS and u.input[0] == tensor
                      or u.op_type in _POSITIVE_HOMOGENEOUS and c > 0 and u.input[0] == tensor
                      or u.op_type == "Mul" and len(u.input) == 2)
            if not passes or any(i in scaled for i in u.input[1:] if u.op_type != "Mul"):
                return None
            if u.op_type == "Mul" and all(i in scaled for i in u.input):
                return None   # both factors scaled: the product is scaled by c squared
            if u.output[0] not in scaled:
                scaled.add(u.output[0])
                frontier.append(u.output[0])
    # a Mul whose other factor turns out to be scaled too (reached later on another path): c squared
    for tensor in scaled:
        for u in readers.get(tensor, []):
            if u.op_type == "Mul" and all(i in scaled for i in u.input):
                return None
    return leaves or None


def _swap_mul_add(graph, mul, add, x: str, value: float, inits: dict, shared: set, outputs: set) -> bool:
    """Rewrite ``s * x + t`` as ``(x + t / s) * s`` (the Mul moves after the Add, where it may fold forward);
    False when the Add is not by a scalar constant of its own or writes a graph output."""
    from onnx import numpy_helper

    nxt = _scalar_operand(add, inits)
    if nxt is None or nxt[0] != mul.output[0] or add.output[0] in outputs or _inits_shared(add, inits, shared):
        return False
    t_name = next(i for i in add.input if i in inits)
    t = numpy_helper.to_array(inits[t_name])
    inits[t_name].CopyFrom(numpy_helper.from_array((t / value).astype(t.dtype), t_name))
    mid, end = mul.output[0], add.output[0]
    add.input[:] = [x, t_name]
    add.output[:] = [mid]
    mul.input[:] = [mid, next(i for i in mul.input if i in inits)]
    mul.output[:] = [end]
    nodes = [n for n in graph.node if n is not mul]
    nodes.insert(nodes.index(add) + 1, mul)
    del graph.node[:]
    graph.node.extend(nodes)
    return True


def _inits_shared(node, inits: dict, shared: set) -> bool:
    return any(i in inits and i in shared for i in node.input)


def _scalar_operand(node, inits: dict):
    """(the non-constant input, the constant as a float) when ``node`` is a Mul/Add of a tensor by a one-element
    float constant, or a Div of a tensor by one (the value is then its inverse: x / c = x * (1 / c)); None
    otherwise."""
    from onnx import numpy_helper

    if node.op_type not in ("Mul", "Add", "Div") or len(node.input) != 2:
        return None
    consts = [i for i in node.input if i in inits]
    if len(consts) != 1 or (node.op_type == "Div" and consts[0] != node.input[1]):
        return None
    value = numpy_helper.to_array(inits[consts[0]])
    if value.size != 1 or value.dtype != np.float32 or (node.op_type == "Div" and not value.reshape(())):
        return None
    x = node.input[1] if node.input[0] == consts[0] else node.input[0]
    scalar = float(value.reshape(()))
    return x, 1.0 / scalar if node.op_type == "Div" else scalar


def _plain_conv(node, x: str, inits: dict, shared: set) -> bool:
    """A 2-D Conv reading ``x`` as its data input only, with constant weights (and bias) no other node reads."""
    if node.op_type != "Conv" or node.input[0] != x or x in node.input[1:] or len(node.input) < 2:
        return False
    ws = [i for i in node.input[1:] if i]
    return all(i in inits and i not in shared for i in ws) and len(inits[node.input[1]].dims) == 4


def _unpadded(node) -> bool:
    for a in node.attribute:
        if a.name == "pads" and any(a.ints):
            return False
        if a.name == "auto_pad" and a.s not in (b"", b"NOTSET", b"VALID"):
            return False
    return True


def _add_bias(graph, conv, shift: np.ndarray, inits: dict) -> None:
    from onnx import numpy_helper

    if len(conv.input) >= 3 and conv.input[2]:
        b = numpy_helper.to_array(inits[conv.input[2]])
        inits[conv.input[2]].CopyFrom(numpy_helper.from_array((b + shift).astype(b.dtype), conv.input[2]))
        return
    taken = {t.name for t in graph.initializer}
    name, k = f"{conv.input[1]}_bias", 0
    while name in taken:
        k += 1
        name = f"{conv.input[1]}_bias{k}"
    graph.initializer.append(numpy_helper.from_array(shift, name))
    inits[name] = graph.initializer[-1]
    conv.input[:] = [*conv.input[:2], name]


def hard_swish_pattern(node, producer: dict, consts: dict, uses: dict):
    """(x, clip output, the Mul node) when ``node`` ends x * Clip(Add(x, 3), 0, 6) / 6 (Div by 6 or Mul by 1/6)
    and that Mul feeds nothing else; None otherwise."""
    def const(name):
        v = consts.get(name)
        return float(v) if v is not None and v.size == 1 else None

    if node.op_type == "Div" and len(node.input) == 2 and _close(const(node.input[1]), 6.0):
        inner = node.input[0]
    elif node.op_type == "Mul" and len(node.input) == 2 and _close(const(node.input[1]), 1 / 6):
        inner = node.input[0]
    elif node.op_type == "Mul" and len(node.input) == 2 and _close(const(node.input[0]), 1 / 6):
        inner = node.input[1]
    else:
        return None
    mul = producer.get(inner)
    if mul is None or mul.op_type != "Mul" or uses.get(inner, 0) != 1:
        return None
    for x, c in (tuple(mul.input), tuple(mul.input)[::-1]):
        clip = producer.get(c)
        if clip is None or clip.op_type != "Clip" or len(clip.input) < 3:
            continue
        if not (_close(const(clip.input[1]), 0.0) and _close(const(clip.input[2]), 6.0)):
            continue
        add = producer.get(clip.input[0])
        if add is not None and add.op_type == "Add" and len(add.input) == 2:
            a, b = add.input
            if (a == x and _close(const(b), 3.0)) or (b == x and _close(const(a), 3.0)):
                return x, c, mul
    return None


def _close(v: float | None, want: float) -> bool:
    return v is not None and abs(v - want) <= 1e-5 * max(1.0, abs(want))
