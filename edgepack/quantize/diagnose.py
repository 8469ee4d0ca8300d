"""Where INT8 error comes from: per-layer FP32-vs-INT8 SQNR, mapped back to PyTorch module names.

Every activation the quantizer rounded (a QuantizeLinear in the QDQ model) is compared with the
same tensor in the FP32 model, on real samples. Both models run with graph optimizations off, so
the INT8 values are exactly what the next layer reads. For each layer we report:

- ``sqnr_db``: SQNR of the INT8 tensor vs FP32 at that point (error accumulated so far), dB;
- ``drop_db``: how much SQNR the layer itself loses (worst input SQNR minus its output SQNR), the
  error it injects. Layers are ranked by it, worst first: these are the ones to keep in float. None when no
  input of the layer is rounded (a text model's embedding lookup): those rows come last.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgepack.backends.onnx_quantize import fold_factors
from edgepack.backends.onnx_regions import float_region

log = logging.getLogger(__name__)
DIAG_SAMPLES = 16


def module_name(node_name: str) -> str:
    """'/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1' (the exporter's scope path of a torch module): a scope
    that extends the one before it (``features.0`` then ``features.0.1``, a container's child) replaces it, so
    '/backbone/features.0/features.0.1/block/block.0/block.0.0/Conv' is 'backbone.features.0.1.block.0.0'."""
    segments: list[str] = []
    for part in (p for p in node_name.split("/")[:-1] if p):
        if segments and part.startswith(segments[-1] + "."):
            segments[-1] = part
        else:
            segments.append(part)
    return ".".join(segments) or node_name


def _session(model, names: list[str]):
    import onnx
    import onnxruntime as ort

    known = {o.name for o in model.graph.output}
    extra = [name for name in names if name not in known]
    if extra:  # outputs added on a copy: the caller's model stays as it is
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in extra)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _quantized_tensors(qmodel) -> dict[str, str]:
    """{float tensor name: name of its dequantized twin} for every activation the INT8 model rounds."""
    dq_of = {n.input[0]: n.output[0] for n in qmodel.graph.node if n.op_type == "DequantizeLinear"}
    inits = {i.name for i in qmodel.graph.initializer}
    return {n.input[0]: dq_of[n.output[0]] for n in qmodel.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.output[0] in dq_of}


def _feeds(x, input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """One feed per sample: x is (N, C, H, W) for the model's single input, or {input name: (N, L)} (text)."""
    if isinstance(x, dict):
        n = len(next(iter(x.values())))
        return [{name: x[name][i:i + 1] for name in input_names} for i in range(n)]
    return [{input_names[0]: x[i:i + 1]} for i in range(len(x))]


def _sqnr_by_tensor(fsess, qsess, names: list[str], twins: list[str], feeds: list[dict[str, np.ndarray]],
                    factors: dict[str, float] | None = None) -> dict[str, float]:
    """SQNR (dB) of every FP32 tensor in ``names`` against its INT8 twin over ``feeds``, the FP32 tensor times
    ``factors[name]`` where given (a twin holding a folded constant multiply). Energies are summed one sample at a
    time: only one sample's activations are held (EfficientNet-Lite0 at 224 px: ~40 MB a sample and model, where
    holding 16 samples of both models in float64 took 2.6 GB)."""
    signal, noise = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    factors = factors or {}
    for feed in feeds:
        for n, r, g in zip(names, fsess.run(names, feed), qsess.run(twins, feed), strict=True):
            s, e = _energies(r * factors[n] if n in factors else r, g)
            signal[n] += s
            noise[n] += e
    return {n: _db(signal[n], noise[n]) for n in names}


def _energies(ref, got) -> tuple[float, float]:
    """(signal, noise) energies of one sample's tensor against its reference, in float64."""
    r64, g64 = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    return float(np.dot(r64, r64)), float(np.dot(r64 - g64, r64 - g64))


def _db(signal: float, noise: float) -> float:
    """SQNR in dB of summed energies; 99 for an exact match."""
    return 99.0 if noise == 0 else float(10 * np.log10(max(signal, 1e-30) / noise))


def layer_errors(fp32_path: Path, int8_path: Path, x, samples: int = DIAG_SAMPLES) -> list[dict]:
    """Per-layer error table, worst injected error first. x: (N, C, H, W) preprocessed samples, or for a text
    model {input name: (N, L) int64 token arrays}. An INT8 model without rounded activations (dynamic
    quantization) gives an empty table."""
    import onnx

    fmodel, qmodel = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    pairs = _quantized_tensors(qmodel)
    producer = {o: n for n in fmodel.graph.node for o in n.output}
    pairs = {t: dq for t, dq in pairs.items() if t in producer or t in {i.name for i in fmodel.graph.input}}
    feeds = _feeds(x, [i.name for i in fmodel.graph.input])[:samples]
    names = sorted(pairs)
    if not names:  # onnxruntime runs an empty list of output names as "every output": nothing to compare
        return []
    twins = [pairs[t] for t in names]
    # a bundle's reference (edgepack.bundle.diagnose.float_activations) has each Q/DQ pair as a Clip writing the
    # DQ's output: compare that, after the clip, not the pre-clip tensor (a Conv whose ReLU the quantizer folded
    # into its Q range showed ~25 dB "lost")
    produced = {o for n in fmodel.graph.node for o in n.output}
    refs = [dq if dq in produced else t for t, dq in zip(names, twins, strict=True)]
    folded = fold_factors(qmodel)  # a bundle's reference carries the folded multiply itself (float_activations)
    factors = {t: folded[dq] for t, dq in zip(names, twins, strict=True) if dq in folded and dq not in produced}
    by_ref = _sqnr_by_tensor(_session(fmodel, refs), _session(qmodel, twins), refs, twins, feeds, factors)
    sqnr = {t: by_ref[r] for t, r in zip(names, refs, strict=True)}
    rows = []
    for t, value in sqnr.items():
        node = _compute_node(producer.get(t), producer)
        if node is None:
            continue
        inputs = [sqnr[i] for i in _upstream(node, producer, sqnr)]
        # no rounded input upstream (e.g. a text model's embedding lookup of exact token ids): the layer's own
        # rounding is all its error, but "SQNR lost" from an exact input has no finite value; None, listed last
        rows.append({"tensor": t, "node": node.name, "op": node.op_type, "name": module_name(node.name),
                     "sqnr_db": round(value, 2), "drop_db": round(min(inputs) - value, 2) if inputs else None})
    return sorted(rows, key=lambda r: (r["drop_db"] is None, -(r["drop_db"] or 0.0), r["sqnr_db"], r["name"]))


def _compute_node(node, producer: dict):
    """A Conv/Gemm whose fused activation (Clip/Relu) produced the tensor stands for that tensor."""
    if node is not None and node.op_type in ("Clip", "Relu") and node.input[0] in producer:
        inner = producer[node.input[0]]
        if inner.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            return inner
    return node


def _upstream(node, producer: dict, sqnr: dict, depth: int = 6) -> list[str]:
    """Nearest quantized tensors feeding ``node`` (walking back through unquantized ops)."""
    found, frontier = [], list(node.input)
    for _ in range(depth):
        nxt = []
        for t in frontier:
            if t in sqnr:
                found.append(t)
            elif t in producer:
                nxt += list(producer[t].input)
        frontier = nxt
        if not frontier:
            break
    return found


def sensitive_nodes(rows: list[dict], k: int) -> list[str]:
    """The k compute nodes that inject the most error (candidates to keep in float)."""
    compute = [r for r in rows if r["op"] in ("Conv", "Gemm", "MatMul", "ConvTranspose", "Add")]
    return [r["node"] for r in compute[:k]]


def output_costs(fp32_path: Path, int8_path: Path, x, tensors: list[str] | None = None,
                 samples: int = DIAG_SAMPLES) -> dict[str, float]:
    """{tensor: output SQNR (dB) of the FP32 model with only that activation rounded}, for every activation the INT8
    model rounds (or those of ``tensors``), with the INT8 model's own scale and zero point. The lower, the more
    that one rounding costs at the outputs (the output it hurts most, for models with several): unlike
    ``drop_db`` (what a layer injects where it is) this includes how much the rest of the network amplifies it.
    One session per tensor, each run on ``samples`` samples."""
    import onnx

    return _output_costs(onnx.load(str(fp32_path)), onnx.load(str(int8_path)), x, tensors, samples)


def _output_costs(fmodel, qmodel, x, tensors: list[str] | None, samples: int) -> dict[str, float]:
    inits = {t.name: t for t in qmodel.graph.initializer}
    q_of = {n.input[0]: n for n in qmodel.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    produced = {o for n in fmodel.graph.node for o in n.output} | {i.name for i in fmodel.graph.input}
    wanted = [t for t in (tensors if tensors is not None else sorted(q_of)) if t in q_of and t in produced
              and all(p in inits for p in q_of[t].input[1:] if p)]  # constant scale/zero point: copyable
    feeds = _feeds(x, [i.name for i in fmodel.graph.input])[:samples]
    outs = [o.name for o in fmodel.graph.output]
    ref_sess = _session(fmodel, [])
    refs = [ref_sess.run(outs, f) for f in feeds]
    costs = {}
    for t in wanted:
        sess = _session(_rounded_only(fmodel, q_of[t], inits), [])
        signal, noise = np.zeros(len(outs)), np.zeros(len(outs))
        for feed, ref in zip(feeds, refs, strict=True):
            for k, (r, g) in enumerate(zip(ref, sess.run(outs, feed), strict=True)):
                s, e = _energies(r, g)
                signal[k] += s
                noise[k] += e
        costs[t] = round(min(_db(s, e) for s, e in zip(signal, noise, strict=True)), 2)
    return costs


def measure(fp32_path: Path, int8_path: Path, x, output_costs_of: int = 0, progress=None) -> list[dict]:
    """What `edgepack diagnose` shows: ``layer_errors`` rows, worst first, the first ``output_costs_of`` of them
    with ``output_sqnr_db`` (see output_costs) too. ``progress``: an edgepack ProgressFn, or None."""
    if progress is not None:
        progress("measuring per-layer error", 0, 1)
    rows = layer_errors(fp32_path, int8_path, x)
    if rows and output_costs_of:
        if progress is not None:
            progress("measuring each activation's cost at the outputs", 0, 1)
        costs = output_costs(fp32_path, int8_path, x, [r["tensor"] for r in rows[:output_costs_of]])
        for r in rows[:output_costs_of]:
            r["output_sqnr_db"] = costs.get(r["tensor"])
    return rows


#: activations (the worst by drop_db) whose cost at the outputs the accuracy search measures: one model run per
#: tensor, ~0.5 s each on EfficientNet-Lite0 at 16 samples; the cheap per-layer diagnosis picks them
COSTLY_CANDIDATES = 24


def costly_activations(fp32_path: Path, int8_path: Path, x, rows: list[dict],
                       limit: int = COSTLY_CANDIDATES) -> list[dict]:
    """The activations of the first ``limit`` diagnosis ``rows`` (layer_errors, worst first) ranked by
    ``output_costs``, costliest first: [{"tensor", "output_sqnr_db", "nodes"}], ``nodes`` being the
    ``float_region`` that keeps it unrounded (rows whose region has no named node are left out)."""
    import onnx

    tensors = list(dict.fromkeys(r["tensor"] for r in rows))[:limit]
    fmodel = onnx.load(str(fp32_path))
    costs = _output_costs(fmodel, onnx.load(str(int8_path)), x, tensors, DIAG_SAMPLES)
    ranked = [{"tensor": t, "output_sqnr_db": costs[t], "nodes": float_region(fmodel, t)}
              for t in sorted(costs, key=lambda t: (costs[t], t))]
    return [a for a in ranked if a["nodes"]]


def _rounded_only(fmodel, q, inits: dict):
    """A copy of ``fmodel`` whose tensor ``q.input[0]`` goes through ``q``'s QuantizeLinear and back."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(fmodel.SerializeToString())
    t = q.input[0]
    params = [p for p in q.input[1:] if p]
    model.graph.initializer.extend(inits[p] for p in params if p in inits)
    rounded, back = f"{t}__edgepack_q", f"{t}__edgepack_dq"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == t:
                node.input[i] = back
    attrs = {a.name: helper.get_attribute_value(a) for a in q.attribute}
    pair = [helper.make_node("QuantizeLinear", [t, *params], [rounded], name=rounded, **attrs),
            helper.make_node("DequantizeLinear", [rounded, *params], [back], name=back, **attrs)]
    nodes = list(model.graph.node)
    producer = next((i for i, n in enumerate(nodes) if t in n.output), -1)
    del model.graph.node[:]
    model.graph.node.extend(nodes[:producer + 1] + pair + nodes[producer + 1:])
    return model
