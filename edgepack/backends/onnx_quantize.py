"""Static INT8 quantization of an ONNX model with ONNX Runtime, tuned for ORT's CPU kernels.

Recipe (measured on pretrained EfficientNet-Lite0, see scratch/int8/FINDINGS.md):

1. ``quantize_static`` in QDQ format, int8 symmetric per-channel weights, **uint8** asymmetric
   activations. With int8 activations ORT's x86 QDQ fusion leaves every Conv/Add whose input or output
   tensor has two consumers (all residual blocks) in FP32 (14 Conv + 9 Add on EfficientNet-Lite0) and the
   INT8 model runs at ~0.9x FP32; with uint8 activations every Conv/Add/Gemm fuses into
   QLinearConv/QLinearAdd/QGemm (~0.5x FP32 at one thread).
2. The Q/DQ pair on each graph output is removed so the last op (QGemm) writes float: quantizing logits
   to 8 bits only adds ties between near-equal classes.
3. Empirical bias correction: the rounding error of int8 weights and inputs shifts the per-channel mean of
   every Conv/Gemm output. We measure that shift per node on calibration data (int8 node vs a float twin
   reading the same activation) and fold it into the int32 bias. On EfficientNet-Lite0 this took top-1
   agreement with FP32 on the old held-out set (which mixed natural photos with out-of-domain images) from
   83 % to 91 %, for no latency or size; on today's 14 natural photos it is 96.4 % (out-of-domain: 87 %).
4. A multiplication by a positive scalar constant (hard-swish's x * 1/6, hard-sigmoid's clip(...) * 1/6) goes into
   the scale of the DequantizeLinear before it (`fold_constant_muls`). ORT would run each as a QLinearMul, a
   requantisation of a whole feature map: on the SSDLite shapes detector 28 of its 56 QLinearMul, 0.2 of its
   2.4 ms of kernel time at one thread, for outputs that come out bit-identical without them.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgepack.backends.base import tail_indices
from edgepack.backends.onnx import ARITHMETIC_KEY, TARGET_ARCH_KEY, append_reduce, computed_at_load, host_arch
from edgepack.backends.onnx_histograms import histograms_in_chunks
from edgepack.errors import TimeLimitReached
from edgepack.inputs.data import feed, num_samples, take
from edgepack.util import spread_indices

logger = logging.getLogger(__name__)

_CALIB_METHODS = {
    "minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "distribution": "Distribution",
}
_COMPUTE_OPS = {"Conv", "Gemm", "MatMul", "Add", "Mul", "ConvTranspose"}
_BIAS_CORRECTION_SAMPLES = 64
_BIAS_CORRECTION_ROUNDS = 1


def quantize_onnx(fp32_path: Path, out_path: Path, calib: np.ndarray, *, method: str = "minmax",
                  per_channel: bool = True, exclude_nodes: Sequence[str] = (),
                  activation_type: str = "auto", target_arch: str | None = None,
                  deadline: float | None = None, weight_rounding: str = "nearest", float_tail: bool = False) -> dict:
    """Quantize ``fp32_path`` to a QDQ INT8 model at ``out_path``; return the settings and node counts used.

    ``calib`` is an (N, C, H, W) float32 array, already preprocessed like the model's input.
    ``activation_type``: "auto" (= "uint8", see module docstring), "uint8" or "int8".
    ``target_arch``: the device's ISA ("aarch64" or "x86_64"; None: this host's), see int8_plan.
    ``deadline``: a time.monotonic() value; calibration stops there between samples (raising
    edgepack.errors.TimeLimitReached), so one slow trial cannot overrun the accuracy search's limit.
    ``weight_rounding``: "nearest" (the quantizer's own) or "gptq": Conv/Gemm weights rounded to reproduce each
    layer's outputs on ``calib`` (edgepack.backends.rounding), put on the quantizer's own grid beforehand so that it
    stores exactly those integers; bias correction still measures against the original weights.
    ``float_tail``: the nodes after the last Conv/Gemm/MatMul on every path to an output (a detector's box
    decoding: `float_tail_nodes`) stay in float, so decoded coordinates are not rounded to one 8-bit scale; they
    are recorded as "float_tail", apart from ``exclude_nodes``.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if isinstance(calib, np.ndarray):  # else an array-like read a few rows at a time (inputs.data.PixelArray)
        calib = np.ascontiguousarray(calib, dtype=np.float32)
    act = _resolve_activation_type(activation_type)
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    plan = int8_plan(target_arch)
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    tail = float_tail_nodes(onnx.load(str(fp32_path))) if float_tail else []
    exclude_nodes = [*exclude_nodes, *(n for n in tail if n not in exclude_nodes)]
    reference, hard = _integer_activations(fp32_path, out_path, exclude_nodes)
    try:
        source, rounding = _rounded_source(reference, out_path, calib, weight_rounding, plan, deadline,
                                           exclude_nodes)
        try:
            _run_quantize_static(source, out_path, _ArrayReader(calib, input_name, deadline), method, per_channel,
                                 exclude_nodes, act, extra, plan["reduce_range"])
        finally:
            if source != reference:
                source.unlink(missing_ok=True)
        model, fp32_model = onnx.load(str(out_path)), onnx.load(str(reference))
    finally:
        if reference != fp32_path:
            reference.unlink(missing_ok=True)
    dropped = _drop_output_qdq(model, fp32_model)
    corrected = _bias_correct(model, fp32_model, calib, input_name)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        ARITHMETIC_KEY: plan["arithmetic"], TARGET_ARCH_KEY: plan["target_arch"]})
    folded = fold_constant_muls(model)
    saved = compact_qdq(model)
    onnx.save(model, str(out_path))
    return {
        "format": "QDQ", "method": method, "per_channel": per_channel,
        "activation_type": act, "weight_type": "int8", **plan,
        "extra_options": extra, "nodes_excluded": [n for n in exclude_nodes if n not in tail],
        **({"float_tail": tail} if tail else {}),
        "float_outputs": dropped, "bias_corrected_nodes": corrected, "weight_rounding": rounding,
        "hard_activations": hard, "folded_muls": folded,
        "calibration_samples": num_samples(calib), "compacted_bytes": saved, **_census(out_path),
    }


_QDQ = ("QuantizeLinear", "DequantizeLinear")
#: Ops that do a network's heavy work; what follows the last of them on every path to an output is its tail.
TAIL_STOP_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def float_tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes after which no TAIL_STOP_OPS node follows on any path: a model's post-processing tail
    (reshapes, concats, box decoding, softmax), in graph order. Nodes without a name cannot be excluded and
    are left out."""
    nodes = list(model.graph.node)
    tail = tail_indices([(n.op_type, list(n.input), list(n.output)) for n in nodes], TAIL_STOP_OPS)
    return [nodes[k].name for k in tail if nodes[k].name and nodes[k].op_type != "Constant"]


def _integer_activations(fp32_path: Path, out_path: Path, keep: Sequence[str]) -> tuple[Path, dict]:
    """(the FP32 model the quantizer and bias correction read, the rewrites): a copy beside ``out_path`` whose
    hard-swish and hard-sigmoid are spelled with Add, Clip and Mul (`tflite_prep.delegate_friendly_activations`:
    the same function in float), which ONNX Runtime runs as INT8 QLinearAdd / QLinearMul where it would run
    HardSigmoid, HardSwish or a Div by 6 in float between DequantizeLinear and QuantizeLinear; ``fp32_path``
    itself when the model has none. Nodes in ``keep`` (kept in float) are left alone."""
    from edgepack.backends import tflite_prep

    copy = out_path.with_name(out_path.stem + ".activations.onnx")
    counts = tflite_prep.delegate_friendly_activations(fp32_path, copy, keep=keep)
    if not any(counts.values()):
        copy.unlink(missing_ok=True)
        return fp32_path, counts
    return copy, counts


def _rounded_source(fp32_path: Path, out_path: Path, calib, weight_rounding: str, plan: dict,
                    deadline: float | None, exclude_nodes: Sequence[str] = ()) -> tuple[Path, dict]:
    """(the model the quantizer reads, a record): ``fp32_path`` itself for round-to-nearest, else a copy beside
    ``out_path`` whose weights are already on the int8 grid (7-bit where the plan reduces the range); the nodes
    kept in float keep their weights."""
    from edgepack.backends import rounding

    rounding.check(weight_rounding)
    if weight_rounding == "nearest":
        return fp32_path, {"method": "nearest"}
    model = onnx.load(str(fp32_path))
    learned, summary = rounding.gptq_weights(model, calib, qmax=64 if plan["reduce_range"] else 127,
                                             deadline=deadline, skip=exclude_nodes)
    rounding.apply(model, learned)
    source = out_path.with_name(out_path.stem + ".rounded.onnx")
    onnx.save(model, str(source))
    return source, summary


def fold_constant_muls(model: onnx.ModelProto) -> int:
    """Fold each multiplication of a dequantized activation by a positive scalar constant into the scale of its
    DequantizeLinear, in place; return how many were folded.

    ``Q_a -> DQ_a(s, z) -> Mul(c) -> Q_b -> DQ_b -> consumers`` becomes ``Q_a -> DQ'(c * s, z) -> consumers``.
    ONNX Runtime runs the first as a QLinearMul: a requantisation of a whole feature map to compute a product the
    scale carries exactly (DQ' yields c times the dequantized x). Calibrated ranges scale with c, so Q_b's grid
    is c times Q_a's and Q_b rounds nothing away: on the SSDLite shapes detector (28 folded, one per hard-swish
    x * 1/6 and per hard-sigmoid clip(...) * 1/6 as `_integer_activations` spells them) the outputs are
    bit-identical. The constant may be an initializer or, as quantize_static leaves it, a DequantizeLinear of
    one. Left alone: a Mul whose output is read by anything but one QuantizeLinear or is a graph output, a Q_b
    read by anything but DequantizeLinear nodes (at most one of them writing a graph output), a constant that is
    not a positive finite scalar of rank 0, a DQ_a whose scale or zero point is not a constant scalar, a Q_b
    whose range cuts off part of c times DQ_a's (an activation folded into it, see _covers)."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return 0  # tensors read from inside subgraphs are not seen as consumers here
    folded = 0
    while True:  # chained constant Muls: the second one's DQ_a is the first one's DQ' only after the first fold
        done, touched = 0, set()
        for match in _constant_muls(graph):
            names = {t for node in _match_nodes(*match) for t in node.output}
            if names & touched:
                continue  # a node of it was rewritten by an earlier fold of this pass: the next pass sees it anew
            _fold_mul(graph, *match)
            touched |= names
            done += 1
        if not done:
            return folded
        folded += done


def fold_factors(qmodel) -> dict[str, float]:
    """{DequantizeLinear output: c} for each DequantizeLinear whose scalar scale is c times its QuantizeLinear's: a
    constant multiply `fold_constant_muls` folded into it (a hard-swish's x * 1/6), so it holds c times the rounded
    tensor the QuantizeLinear read. Read back from the scales, so that a shipped file tells it too (the per-layer
    diagnosis: compared as they were, PP-OCR's classifier showed SQNR 1.58 dB (-20 log10(5/6)) for 17 of its
    activations and 39.5 dB "lost" in the conv before one)."""
    inits = {i.name: i for i in qmodel.graph.initializer}

    def scalar(name):
        found = inits.get(name)
        value = numpy_helper.to_array(found) if found is not None else None
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    q_scale = {n.output[0]: scalar(n.input[1]) for n in qmodel.graph.node
               if n.op_type == "QuantizeLinear" and len(n.input) > 1}
    found = {}
    for n in qmodel.graph.node:
        if n.op_type == "DequantizeLinear" and len(n.input) > 1 and q_scale.get(n.input[0]):
            d = scalar(n.input[1])
            if d is not None and abs(d / q_scale[n.input[0]] - 1.0) > 1e-6:
                found[n.output[0]] = d / q_scale[n.input[0]]
    return found


def _match_nodes(mul, dq_a, const_dq, c, q_b, dq_bs) -> list:
    return [mul, dq_a, q_b, *dq_bs] + ([const_dq] if const_dq is not None else [])


def _constant_muls(graph: onnx.GraphProto) -> list[tuple]:
    """(Mul, DQ_a, constant's DequantizeLinear or None, c, Q_b, [DQ_b...]) for each foldable Mul (see
    fold_constant_muls), in graph order."""
    inits = {t.name: t for t in graph.initializer}
    prod, readers = _producers(graph), _readers(graph)
    outputs = {o.name for o in graph.output}
    found = []
    for mul in graph.node:
        if mul.op_type != "Mul" or len(mul.input) != 2 or mul.output[0] in outputs:
            continue
        q_b = _only_quantize(readers.get(mul.output[0], []), mul.output[0])
        dq_bs = readers.get(q_b.output[0], []) if q_b is not None else []
        if not dq_bs or q_b.output[0] in outputs or sum(d.output[0] in outputs for d in dq_bs) > 1 or any(
                n.op_type != "DequantizeLinear" or list(n.input).index(q_b.output[0]) != 0 for n in dq_bs):
            continue
        for k in (0, 1):
            dq_a = prod.get(mul.input[1 - k])
            const = _scalar_constant(mul.input[k], prod, inits)
            if dq_a is None or dq_a.op_type != "DequantizeLinear" or const is None:
                continue
            c, const_dq = const
            if np.isfinite(c) and c > 0 and _per_tensor_dq(dq_a, inits) and _same_scale_type(dq_a, dq_bs, inits) \
                    and _covers(q_b, dq_a, c, inits):
                found.append((mul, dq_a, const_dq, c, q_b, dq_bs))
                break
    return found


def _readers(graph: onnx.GraphProto) -> dict[str, list]:
    """Tensor name -> the nodes reading it (once per node)."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for t in dict.fromkeys(node.input):
            if t:
                readers.setdefault(t, []).append(node)
    return readers


def _only_quantize(nodes: list, tensor: str) -> onnx.NodeProto | None:
    """The QuantizeLinear in ``nodes`` if it is their only node and quantizes ``tensor`` (its input 0)."""
    if len(nodes) != 1 or nodes[0].op_type != "QuantizeLinear" or list(nodes[0].input).count(tensor) != 1:
        return None
    return nodes[0] if nodes[0].input[0] == tensor else None


def _scalar_constant(name: str, prod: dict, inits: dict) -> tuple[float, onnx.NodeProto | None] | None:
    """(value, the DequantizeLinear computing it or None) when ``name`` is a one-element constant of rank 0: an
    initializer or a DequantizeLinear of initializers (what quantize_static makes of a constant Mul operand). Rank
    0 only, so the Mul's output has its other input's shape whatever that rank."""
    if name in inits:
        value, node = numpy_helper.to_array(inits[name]), None
    elif (node := prod.get(name)) is not None and node.op_type == "DequantizeLinear" \
            and all(i in inits for i in node.input if i):
        value = _dequantize(node, inits)
    else:
        return None
    if value.ndim != 0 or not np.issubdtype(value.dtype, np.floating):
        return None
    return float(value), node


def _per_tensor_dq(dq: onnx.NodeProto, inits: dict) -> bool:
    """True when the DequantizeLinear's scale and zero point (if any) are one-element initializers."""
    return all(name in inits and int(np.prod(inits[name].dims)) == 1 for name in dq.input[1:3] if name)


def _covers(q_b: onnx.NodeProto, dq_a: onnx.NodeProto, c: float, inits: dict) -> bool:
    """True when Q_b can represent c times every value DQ_a yields, give or take one of Q_b's steps at each end.

    Otherwise Q_b clips: the quantizer folded an activation after the Mul into Q_b's range (a Relu or Clip it
    removed, see _drop_output_qdq), or calibration cut the tail; the fold would drop that clip."""
    a, b = representable_range(dq_a, inits), representable_range(q_b, inits)
    if a is None or b is None:
        return False
    step = float(numpy_helper.to_array(inits[q_b.input[1]]).reshape(()))
    return b[0] <= c * a[0] + step and b[1] >= c * a[1] - step


def _same_scale_type(dq_a: onnx.NodeProto, dq_bs: list, inits: dict) -> bool:
    """True when every DQ_b writes the float type DQ_a writes (their scales' type), so DQ' can stand in for them."""
    return all(d.input[1] in inits and inits[d.input[1]].data_type == inits[dq_a.input[1]].data_type for d in dq_bs)


def _fold_mul(graph: onnx.GraphProto, mul, dq_a, const_dq, c: float, q_b, dq_bs) -> None:
    """Replace Mul -> Q_b -> DQ_b(s) by one DequantizeLinear of DQ_a's input with scale c x DQ_a's scale, written to
    DQ_b's output (the one that is a graph output, if any), and remove what nothing reads any more."""
    outputs = {o.name for o in graph.output}
    kept = sorted(dq_bs, key=lambda d: d.output[0] not in outputs)
    inits = {t.name: t for t in graph.initializer}
    scale = numpy_helper.to_array(inits[dq_a.input[1]])
    scale_name = _unused_name(graph, (mul.name or mul.output[0]) + "_folded_scale")
    graph.initializer.append(numpy_helper.from_array((scale.astype(np.float64) * c).astype(scale.dtype), scale_name))
    folded = onnx.helper.make_node("DequantizeLinear", [dq_a.input[0], scale_name, *dq_a.input[2:3]],
                                   [kept[0].output[0]])
    folded.attribute.extend(dq_a.attribute)  # DQ_a's axis and the like: DQ' is DQ_a with its scale times c
    others = {d.output[0] for d in kept[1:]}
    for node in graph.node:  # the other DQ_b's readers read DQ' instead
        node.input[:] = [kept[0].output[0] if t in others else t for t in node.input]
    graph.node.insert(list(graph.node).index(kept[0]), folded)
    gone = [mul, q_b, *dq_bs]
    for node in gone:
        graph.node.remove(node)
    gone += _drop_unread(graph, [n for n in (dq_a, const_dq) if n is not None])
    _drop_unread_initializers(graph, {t for n in gone for t in n.input})


def _unused_name(graph: onnx.GraphProto, name: str) -> str:
    taken = {t for n in graph.node for t in (*n.input, *n.output)} | {t.name for t in graph.initializer}
    k, candidate = 0, name
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def _drop_unread(graph: onnx.GraphProto, nodes: list) -> list:
    """Remove those of ``nodes`` whose outputs nothing reads (no node, no graph output); return them."""
    read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    unread = [n for n in nodes if not any(o in read for o in n.output)]
    for node in unread:
        graph.node.remove(node)
    return unread


def _drop_unread_initializers(graph: onnx.GraphProto, names: set) -> None:
    """Remove the initializers among ``names`` that no node reads and that are not graph outputs."""
    read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    for init in [t for t in graph.initializer if t.name in names and t.name not in read]:
        graph.initializer.remove(init)


def compact_qdq(model: onnx.ModelProto) -> int:
    """Shrink the file without changing a number: the names the quantizer made up (Q/DQ outputs, scales, zero
    points, quantized weights: ``conv1.weight_quantized``, ``x_QuantizeLinear_Output``...) become short ones, Q/DQ
    nodes lose their names, and the inferred value_info goes (runtimes infer it again). On a small model these
    strings are a tenth of the INT8 file (PP-OCRv4: 0.32x -> 0.29x of FP32). The model's own tensor and node
    names stay: graph inputs and outputs, every activation a QuantizeLinear reads (what edgepack diagnose
    compares with the FP32 model) and every compute node's name.

    A DequantizeLinear's zero point is optional (0 when absent), so the all-zero ones of symmetric weights
    (int8, one per output channel) and of int32 biases go, with any initializer no node reads: on a model of many
    thin layers that is a twentieth of the file (SSDLite shapes detector: 1.255 -> 1.186 MB; ONNX Runtime fuses the
    same QLinearConv graph and computes the same outputs). QuantizeLinear keeps its zero point: its type is the
    output's type. A convolution's bias scale becomes the product of its input and weight scales that it is
    (`_bias_scales_as_products`). Returns the bytes saved."""
    before = model.ByteSize()
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return 0  # names seen from inside subgraphs (If, Loop, Scan): left as they are
    _drop_zero_dq_zero_points(graph)
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    made = [t for n in graph.node if n.op_type in _QDQ for t in (*n.input[1:], n.output[0]) if t]
    made += [n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"]  # weights stored quantized
    producers = {o for n in graph.node if n.op_type not in _QDQ for o in n.output}
    taken = {t for n in graph.node for t in (*n.input, *n.output)} | {t.name for t in graph.initializer} | keep
    rename, k = {}, 0
    for name in made:
        if name in rename or name in keep or name in producers:
            continue
        while f"q{k}" in taken:
            k += 1
        rename[name] = f"q{k}"
        taken.add(rename[name])
    for node in graph.node:
        node.input[:] = [rename.get(t, t) for t in node.input]
        node.output[:] = [rename.get(t, t) for t in node.output]
        if node.op_type in _QDQ:
            node.name = ""
    for init in graph.initializer:
        init.name = rename.get(init.name, init.name)
    del graph.value_info[:]
    _bias_scales_as_products(graph, taken)
    return before - model.ByteSize()


def _bias_scales_as_products(graph: onnx.GraphProto, taken: set) -> int:
    """Store each convolution's int32 bias scale as what it is, ``Mul(input scale, weight scales)``, instead of a
    vector of its own, where the stored vector is bit for bit that float32 product (what onnxruntime's quantizer
    writes). ONNX Runtime folds the constant Mul when it loads the model (basic optimizations, before its QDQ
    fusions): the same QLinearConv kernels and outputs, with optimizations on or off. One float per output
    channel less: the SSDLite shapes detector's file 1.207 -> 1.156 MB. Returns how many were replaced."""
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for t in node.input:
            readers[t] = readers.get(t, 0) + 1
    products, dropped, k = [], set(), 0
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 3:
            continue
        dqs = [producer.get(t) for t in node.input[:3]]
        if not all(d is not None and d.op_type == "DequantizeLinear" and len(d.input) >= 2 for d in dqs):
            continue
        x_scale, w_scale, b_scale = (d.input[1] for d in dqs)
        if not all(t in inits for t in (x_scale, w_scale, b_scale)) or readers.get(b_scale) != 1:
            continue
        want = numpy_helper.to_array(inits[b_scale])
        got = numpy_helper.to_array(inits[x_scale]) * numpy_helper.to_array(inits[w_scale])
        if want.dtype != np.float32 or got.dtype != np.float32 or not np.array_equal(got, want):
            continue
        while f"b{k}" in taken:
            k += 1
        taken.add(f"b{k}")
        products.append(onnx.helper.make_node("Mul", [x_scale, w_scale], [f"b{k}"]))
        dqs[2].input[1] = f"b{k}"
        dropped.add(b_scale)
    if products:
        nodes = products + list(graph.node)   # constants only: ahead of everything keeps the order topological
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_unread_initializers(graph, dropped)
    return len(products)


def _drop_zero_dq_zero_points(graph: onnx.GraphProto) -> None:
    """Remove the constant-zero zero points of DequantizeLinear nodes that only Conv nodes read, then every
    initializer no node reads. Only Conv's: ONNX Runtime's QGemm fusion rejects a weight without a zero point
    ("zero point and scale of input b should have same shape size"), while QLinearConv takes it."""
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, set] = {}
    for node in graph.node:
        for t in node.input:
            readers.setdefault(t, set()).add(node.op_type)
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        if readers.get(node.output[0]) != {"Conv"}:
            continue
        if not numpy_helper.to_array(inits[node.input[2]]).any():
            del node.input[2]
    _drop_unread_initializers(graph, {t.name for t in graph.initializer})


def _resolve_activation_type(activation_type: str) -> str:
    """uint8 by default: ORT's CPU QDQ fusion is complete with uint8 activations (see module docstring)."""
    if activation_type == "auto":
        return "uint8"
    if activation_type not in ("uint8", "int8"):
        raise ValueError(f"activation_type must be auto, uint8 or int8, not {activation_type!r}")
    return activation_type


def host_saturates() -> bool:
    """True on x86 hosts without VNNI (AVX2-only, e.g. many AMD EPYC / older Xeons).

    There ONNX Runtime runs uint8 x int8 products with vpmaddubsw, whose pairwise int16 sums saturate
    (255 * 127 * 2 > 32767): on EfficientNet-Lite0 INT8 agreed with FP32 on only 70 % of 300 held-out natural
    crops (SQNR 7.6 dB) with these kernels, against 97.7 % (22.1 dB) for the same model file computed exactly.
    """
    if host_arch() != "x86_64":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return not any(f in flags for f in (" avx512_vnni", " avx_vnni", " amx_int8"))


def int8_plan(target_arch: str | None = None) -> dict:
    """How the INT8 ONNX model is built and which arithmetic validates it, for a device of ``target_arch``.

    - A device of another ISA than this host (an ARM board built on x86): full 8-bit weights, and every host run
      of the model (validation, search, golden outputs) uses reference arithmetic: the QDQ pairs unfused, i.e. the
      exact integer products an ARM device's kernels compute. This host's own fused kernels may saturate (see
      host_saturates) and would judge a model the device never runs. Recorded in the model's metadata
      (edgepack.backends.onnx.ARITHMETIC_KEY) so that every runner, `edgepack verify` included, agrees.
    - A device of this host's ISA (x86 on x86): this host's kernels are the device's, so they validate; on hosts
      whose kernels saturate, 7-bit weights (ORT's documented remedy, reduce_range: 255 * 63 * 2 fits), since
      the device may have the same kernels. Measured on EfficientNet-Lite0 there: 90 % agreement, 15.2 dB.
    """
    here = host_arch()
    target = target_arch or here
    if target != here:
        return {"reduce_range": False, "arithmetic": "reference", "target_arch": target}
    return {"reduce_range": host_saturates(), "arithmetic": "native", "target_arch": target}


class _ArrayReader:
    """CalibrationDataReader over an (N, C, H, W) array, one sample at a time, in order (deterministic);
    past ``deadline`` (time.monotonic()) it raises TimeLimitReached instead of giving the next sample."""

    def __init__(self, data, input_name: str, deadline: float | None = None):
        self._data, self._name, self._i, self.deadline = data, input_name, 0, deadline

    def get_next(self):
        if self._i >= num_samples(self._data):
            return None
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeLimitReached("calibration stopped at the time limit")
        self._i += 1
        return feed(self._data, self._name, self._i - 1, self._i)

    def rewind(self):
        self._i = 0


def _run_quantize_static(fp32_path, out_path, reader, method, per_channel, exclude_nodes, act, extra,
                         reduce_range=False):
    """ORT's quantize_static with the recipe's fixed settings (QDQ, int8 weights; 7-bit weights where int8_plan
    says so)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in _CALIB_METHODS:
        raise ValueError(f"method must be one of {sorted(_CALIB_METHODS)}, not {method!r}")
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with histograms_in_chunks(deadline=getattr(reader, "deadline", None)):
        quantize_static(
            str(fp32_path), str(out_path), reader,
            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
            activation_type=qtype[act], weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, _CALIB_METHODS[method]),
            nodes_to_exclude=list(exclude_nodes), extra_options=dict(extra),
            calibration_providers=["CPUExecutionProvider"],
        )
    logger.info("quantize_static done: %s (%s, per_channel=%s, act=%s)",
                out_path.name, method, per_channel, act)


def _producers(graph: onnx.GraphProto) -> dict:
    return {out: node for node in graph.node for out in node.output}


def _drop_output_qdq(model: onnx.ModelProto, fp32: onnx.ModelProto | None = None) -> list[str]:
    """Remove Q->DQ pairs that end on a graph output so the producing op writes float directly.

    ORT then fuses the last op as e.g. QGemm with float output: no accuracy is lost to 8-bit logits.
    With ``fp32`` (the model before quantization), a pair is kept when the op before it is not the op that
    produced the output in FP32: the quantizer folds a Relu/Clip after a Conv into the 8-bit range, and
    dropping the pair would then ship the Conv's output without its activation (a feature-map output, or a
    second output that is also read inside the graph, became noise).
    """
    graph, dropped = model.graph, []
    prod = _producers(graph)
    fp32_prod = _producers(fp32.graph) if fp32 is not None else None
    for out in graph.output:
        dq = prod.get(out.name)
        q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        src = prod.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if src is None or sum(q.input[0] in n.input for n in graph.node) != 1:
            continue  # the float tensor feeds something else too: keep it
        if fp32_prod is not None and getattr(fp32_prod.get(out.name), "op_type", src.op_type) != src.op_type:
            continue  # an activation was folded into the 8-bit range: only the Q/DQ pair applies it
        src.output[list(src.output).index(q.input[0])] = out.name
        graph.node.remove(q)
        graph.node.remove(dq)
        dropped.append(out.name)
    return dropped


def _bias_targets(model: onnx.ModelProto) -> dict:
    """Conv/Gemm nodes with an int32 bias behind a DequantizeLinear: name -> (node, bias init, scale)."""
    inits = {t.name: t for t in model.graph.initializer}
    prod, out = _producers(model.graph), {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        dq = prod.get(node.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        if inits[dq.input[0]].data_type == onnx.TensorProto.INT32 and dq.input[1] in inits:
            out[node.name] = (node, inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]]))
    return out


def _with_channel_means(model: onnx.ModelProto, tensors: list[tuple[str, int]]) -> tuple[bytes, list[str]]:
    """Serialized copy of ``model`` that also returns the per-channel (axis 1) mean of each (tensor, rank) over
    every other axis, reduced inside the graph; and those outputs' names."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    opset = next((o.version for o in copy.opset_import if o.domain in ("", "ai.onnx")), 13)
    outs = [append_reduce(copy.graph, opset, "ReduceMean", t, [0, *range(2, rank)], f"{t}__ep_cmean")
            for t, rank in tensors]
    copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(o) for o in outs)
    return copy.SerializeToString(), outs


def _channel_means(model_bytes: bytes, outputs: list[str], samples: np.ndarray,
                   input_name: str) -> list[np.ndarray]:
    """Mean over ``samples`` of the graph ``outputs`` (per-channel means, see _with_channel_means), run one
    sample at a time.

    Graph optimizations are disabled so the QDQ graph is evaluated as written (fake-quant semantics,
    same numbers as ORT's fused kernels up to rounding) and no extra output blocks a fusion.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    sums = None
    n = num_samples(samples)
    for i in range(n):
        means = [o.astype(np.float64) for o in sess.run(outputs, feed(samples, input_name, i, i + 1))]
        sums = means if sums is None else [a + b for a, b in zip(sums, means, strict=True)]
    return [s / n for s in sums]


def _bias_correct(qmodel: onnx.ModelProto, fmodel: onnx.ModelProto, calib: np.ndarray,
                  input_name: str) -> int:
    """Empirical bias correction, in place on ``qmodel``; returns the number of corrected nodes.

    Quantization error is not zero-mean per channel (weight rounding correlates with the input's mean),
    and a per-channel offset early on shifts everything after it. For each Conv/Gemm we measure its
    *local* error on calibration images: the int8 node (quantized input, int8 weights) against a float
    twin that reads the same activation before its QuantizeLinear, with the original float weights.
    Subtracting that per-channel mean from the int32 bias cannot double-count upstream errors (correcting
    the end-to-end error of every layer at once diverged to 0 % agreement). One round: a second one
    (inputs now slightly corrected) measured no better.
    """
    targets = _bias_targets(qmodel)
    fnodes = {n.name: n for n in fmodel.graph.node}
    fast = _float_weight_copy(qmodel)
    pairs = _add_float_twins(fast, targets, fnodes, fmodel)
    if not pairs:
        return 0
    idx = spread_indices(num_samples(calib), _BIAS_CORRECTION_SAMPLES)
    tensors = [(t, rank) for _, q_out, f_out, rank in pairs for t in (q_out, f_out)]
    for _ in range(_BIAS_CORRECTION_ROUNDS):
        means = _channel_means(*_with_channel_means(fast, tensors), take(calib, idx), input_name)
        for k, (name, _, _, _) in enumerate(pairs):
            _shift_bias(targets[name][1], targets[name][2], means[2 * k] - means[2 * k + 1])
        _sync_biases(fast, targets)
    logger.info("bias correction: %d nodes, %d samples, %d rounds",
                len(pairs), len(idx), _BIAS_CORRECTION_ROUNDS)
    return len(pairs)


def _add_float_twins(fast: onnx.ModelProto, targets: dict, fnodes: dict, fmodel: onnx.ModelProto) -> list:
    """For each target node add a float copy fed by the pre-Q activation; return (name, q_out, twin_out, rank of
    the outputs: that of the weight, for Conv and Gemm alike)."""
    prod, finits = _producers(fast.graph), {t.name: t for t in fmodel.graph.initializer}
    pairs = []
    for name, (node, _, _) in targets.items():
        dq = prod.get(node.input[0])
        q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        fnode = fnodes.get(name)
        if q is None or q.op_type != "QuantizeLinear" or fnode is None or fnode.op_type != node.op_type:
            continue
        if not all(i in finits for i in fnode.input[1:3]) or not _per_tensor(fast, q):
            continue
        twin = onnx.NodeProto()
        twin.CopyFrom(fnode)
        twin.name, twin.output[0] = name + "__ref", name + "__ref_out"
        twin.input[0] = _saturated(fast, q, name)
        for k in (1, 2):
            array = numpy_helper.to_array(finits[fnode.input[k]])
            fast.graph.initializer.append(numpy_helper.from_array(array, f"{name}__{fnode.input[k]}"))
            twin.input[k] = f"{name}__{fnode.input[k]}"
        fast.graph.node.append(twin)
        pairs.append((name, node.output[0], twin.output[0], len(finits[fnode.input[1]].dims)))
    return pairs


def _per_tensor(model: onnx.ModelProto, q: onnx.NodeProto) -> bool:
    """True if the QuantizeLinear has a constant scalar scale and zero point (the twin's Clip needs one)."""
    inits = {t.name: t for t in model.graph.initializer}
    return all(name in inits and int(np.prod(inits[name].dims)) == 1 for name in q.input[1:3])


def _saturated(fast: onnx.ModelProto, q: onnx.NodeProto, name: str) -> str:
    """Clip the pre-Q activation to the range its QuantizeLinear can represent; return the clipped tensor.

    The quantizer drops Relu/Clip nodes whose range the Q saturation reproduces (QDQ "removable activations"),
    so the tensor before Q can be the raw pre-activation. The float twin must see what the int8 node sees
    minus rounding: the saturated value.
    """
    inits = {t.name: t for t in fast.graph.initializer}
    fast.graph.node.append(saturation(fast.graph, q.input[0], name + "__sat", representable_range(q, inits)))
    return name + "__sat"


def representable_range(q: onnx.NodeProto, inits: dict) -> tuple[float, float] | None:
    """(lowest, highest) float value the QuantizeLinear ``q`` can represent, (qmin - zero point) x scale to
    (qmax - zero point) x scale; None unless its scale and zero point are constant scalars (``inits``: name ->
    initializer)."""
    if len(q.input) < 3 or q.input[1] not in inits or q.input[2] not in inits:
        return None
    scale, zero = numpy_helper.to_array(inits[q.input[1]]), numpy_helper.to_array(inits[q.input[2]])
    if scale.size != 1 or zero.size != 1 or not np.issubdtype(zero.dtype, np.integer):
        return None
    info, s, z = np.iinfo(zero.dtype), float(scale.reshape(())), float(zero.reshape(()))
    return (info.min - z) * s, (info.max - z) * s


def saturation(graph: onnx.GraphProto, x: str, out: str, bounds: tuple[float, float]) -> onnx.NodeProto:
    """A Clip node ``x`` -> ``out`` to ``bounds``, its two bounds added to ``graph`` as initializers."""
    lo, hi = out + "__lo", out + "__hi"
    graph.initializer.extend([numpy_helper.from_array(np.array(bounds[0], np.float32), lo),
                              numpy_helper.from_array(np.array(bounds[1], np.float32), hi)])
    return onnx.helper.make_node("Clip", [x, lo, hi], [out])


def _shift_bias(bias_init: onnx.TensorProto, scale: np.ndarray, delta: np.ndarray) -> None:
    """bias_q -= round(delta / bias_scale), saturating to int32, written back into the initializer."""
    q = numpy_helper.to_array(bias_init).astype(np.int64)
    q = q - np.round(delta.astype(np.float64) / np.maximum(scale.astype(np.float64), 1e-30)).astype(np.int64)
    info = np.iinfo(np.int32)
    clipped = np.clip(q, info.min, info.max).astype(np.int32)
    bias_init.CopyFrom(numpy_helper.from_array(clipped, bias_init.name))


def _float_weight_copy(qmodel: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of the QDQ model with weight DequantizeLinear nodes folded to float initializers (same values).

    Only for measuring: the unoptimized session would otherwise dequantize every weight on every run.
    int32 bias DQs stay so corrected biases can be synced in by name.
    """
    fast = onnx.ModelProto()
    fast.CopyFrom(qmodel)
    inits = {t.name: t for t in fast.graph.initializer}
    for node in list(fast.graph.node):
        if node.op_type != "DequantizeLinear" or not all(i in inits for i in node.input if i):
            continue
        if inits[node.input[0]].data_type == onnx.TensorProto.INT32:
            continue
        fast.graph.initializer.append(numpy_helper.from_array(_dequantize(node, inits), node.output[0]))
        fast.graph.node.remove(node)
    return fast


def _dequantize(node: onnx.NodeProto, inits: dict) -> np.ndarray:
    q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) if len(node.input) > 2 else 0.0
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
    return ((q - zero) * scale).astype(np.float32)


def _sync_biases(fast: onnx.ModelProto, targets: dict) -> None:
    by_name = {t.name: t for t in fast.graph.initializer}
    for _, bias_init, _ in targets.values():
        by_name[bias_init.name].CopyFrom(bias_init)


def _census(path: Path) -> dict:
    """Node counts of the QDQ file and of ORT's fused graph (what actually runs on the CPU EP)."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    prod = _producers(model.graph)
    quantized, float_nodes = Counter(), Counter()
    inits = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if computed_at_load(node, inits):
            continue
        fed = any(prod.get(i) is not None and prod[i].op_type == "DequantizeLinear" for i in node.input)
        (quantized if fed else float_nodes)[node.op_type] += 1
    with tempfile.TemporaryDirectory(prefix="edgepack-census-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        fused = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    float_after = {k: v for k, v in fused.items() if k in _COMPUTE_OPS or k == "FusedConv"}
    return {"quantized_nodes": sum(quantized.values()), "quantized_by_op": dict(sorted(quantized.items())),
            "float_nodes_by_op": dict(sorted(float_nodes.items())),
            "ort_fused_ops": dict(sorted(fused.items())), "ort_float_compute_ops": float_after}
