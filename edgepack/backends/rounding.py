"""Learned weight rounding: each layer's int8 weights chosen to reproduce its outputs on calibration data.

Round-to-nearest puts every weight on its closest int8 step, one weight at a time. What matters is the layer's
output, and there the rounding errors of a row's weights add up along the inputs' correlations. GPTQ (Frantar et
al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", after Optimal
Brain Quantization) rounds a row's weights one input at a time and moves the weights not yet rounded to make up
for the error, using the layer-input second moment ``H = sum x x^T`` over calibration samples (the Hessian of the
layer's squared output error). No maintained library applies it to Conv layers on an ONNX graph for both
onnxruntime and the TFLite converter, so it is written here; the statistics are streamed (one sample's activations
at a time, one D x D matrix per layer).

The grid is the runtimes' own: symmetric per output channel, ``scale = max|w| / qmax`` (qmax 127, or 64 where
onnxruntime uses 7-bit weights), and each row keeps an element at +-qmax, so onnxruntime's ``quantize_static``
and the TFLite converter recompute the same scale from the rounded weights and store exactly the integers chosen
here (tests/test_rounding.py checks both).

Only layers whose inputs the calibration set samples densely are rounded this way: at least
``MIN_POSITIONS_PER_INPUT`` input positions (samples x output pixels) per weight of a row. With fewer, GPTQ fits
the calibration samples rather than the layer (EfficientNet-Lite0 with 200 samples: every layer learned,
weight-only SQNR 22.3 dB after bias correction on held-out photos, worse than rounding to nearest's 25.4; dense
layers only, 30.0). The others round to nearest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepack.errors import TimeLimitReached
from edgepack.inputs.data import feed, num_samples
from edgepack.util import spread_indices

log = logging.getLogger(__name__)

#: calibration samples the layer statistics are collected on (evenly spread; all of them up to this). More samples
#: let more layers be learned (EfficientNet-Lite0: 37 of 50 layers at 128 samples, 43 at 200; weight-only SQNR after
#: bias correction 27.2 -> 30.0 dB on the fresh photos); the cost is one more inference per sample
SAMPLES = 256
MIN_POSITIONS_PER_INPUT = 50  #: input positions per weight of a row a layer needs to be learned (see above)
DAMP = 0.01                   #: added to H's diagonal, as a fraction of its mean (GPTQ's default)
#: the layer statistics one pass over the samples holds (float32 H matrices); larger models take more passes
MAX_STATISTICS_BYTES = 512 * 2**20
#: the weight roundings the backends offer: the quantizers' own round-to-nearest, or learned here
METHODS = ("nearest", "gptq")


def check(method: str) -> None:
    """A ValueError for a weight rounding the backends do not offer."""
    if method not in METHODS:
        raise ValueError(f"weight_rounding must be one of {METHODS}, not {method!r}")


def gptq_weights(model: onnx.ModelProto, calib, *, qmax: int = 127, samples: int = SAMPLES,
                 deadline: float | None = None, skip: Collection[str] = ()) -> tuple[dict[str, np.ndarray], dict]:
    """Learned int8 weights for ``model``'s Conv/Gemm layers: ({weight initializer name: float32 weights on the
    int8 grid}, summary). Layers left to round-to-nearest are not in the dict.

    ``calib``: (N, ...) float32 samples preprocessed like the model's input. ``deadline``: a time.monotonic()
    value; past it, collection stops between samples (TimeLimitReached). ``skip``: node names kept in float
    (the quantizer's excluded nodes), whose weights must stay as they are.
    """
    import torch

    start = time.perf_counter()
    layers = [layer for layer in _layers(model) if layer["node"].name not in set(skip)]
    idx = spread_indices(num_samples(calib), samples)
    rounded, ratios = {}, []
    for chunk in _chunks(layers):  # bounded memory: each pass holds at most MAX_STATISTICS_BYTES of H
        stats = _input_statistics(model, chunk, calib, idx, deadline)
        with torch.no_grad():
            for layer in chunk:
                h, positions = stats.pop(layer["name"], (None, 0))
                if h is None or positions < MIN_POSITIONS_PER_INPUT * layer["depth"]:
                    continue
                w = torch.from_numpy(layer["rows"].astype(np.float64))
                h = h.double()
                q, scale = _gptq(w, h, qmax)
                q = _keep_row_scale(w, q, scale, qmax)
                ratios.append(_output_error(q, w, h) / max(_output_error(_nearest(w, scale, qmax), w, h), 1e-30))
                rounded[layer["weight"]] = _unrows(layer, q.numpy())
    summary = {"method": "gptq (layer-output error, calibration statistics)", "learned_layers": len(rounded),
               "layers": len(layers), "samples": int(len(idx)), "qmax": qmax,
               "min_positions_per_input": MIN_POSITIONS_PER_INPUT,
               "output_error_vs_nearest": round(float(np.median(ratios)), 3) if ratios else None,
               "seconds": round(time.perf_counter() - start, 1)}
    log.info("learned rounding: %d of %d layers on %d samples (output error %.2fx nearest), %.1f s",
             len(rounded), len(layers), len(idx), summary["output_error_vs_nearest"] or 1.0, summary["seconds"])
    return rounded, summary


def apply(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> None:
    """Write learned weights into ``model``'s initializers, in place."""
    for init in model.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))


def _layers(model: onnx.ModelProto) -> list[dict]:
    """Conv and Gemm nodes with constant weights, each with its weights as (groups, rows, depth) and the way
    back to the initializer's layout."""
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in inits or node.input[0] in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.dtype != np.float32:
            continue
        if node.op_type == "Conv" and w.ndim == 4 and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
            g = int(attrs.get("group", 1))
            rows = w.reshape(g, w.shape[0] // g, -1)
        elif node.op_type == "Gemm" and w.ndim == 2 and not attrs.get("transA", 0):
            rows = (w if attrs.get("transB", 0) else w.T)[None]
        else:
            continue
        found.append({"name": node.name or node.output[0], "node": node, "attrs": attrs, "weight": node.input[1],
                      "rows": rows, "shape": w.shape, "depth": rows.shape[2], "kernel": tuple(w.shape[2:])})
    return found


def _unrows(layer: dict, q: np.ndarray) -> np.ndarray:
    """(groups, rows, depth) weights back in the initializer's layout, float32."""
    if layer["node"].op_type == "Gemm" and not layer["attrs"].get("transB", 0):
        q = q[0].T
    return np.ascontiguousarray(q.reshape(layer["shape"]), dtype=np.float32)


def _chunks(layers: list[dict]) -> list[list[dict]]:
    """``layers`` in consecutive groups whose H matrices fit MAX_STATISTICS_BYTES together (a larger one alone)."""
    chunks, size = [[]], 0
    for layer in layers:
        groups, _, depth = layer["rows"].shape
        need = 4 * groups * depth * depth
        if chunks[-1] and size + need > MAX_STATISTICS_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(layer)
        size += need
    return [c for c in chunks if c]


def _input_statistics(model, layers, calib, idx, deadline) -> dict:
    """{layer name: (H as a (groups, D, D) float32 tensor, input positions seen per group)}: every layer's
    input read from one onnxruntime session, one sample at a time."""
    import onnxruntime as ort
    import torch

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted = list(dict.fromkeys(layer["node"].input[0] for layer in layers))
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in wanted)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    stats: dict = {}
    for k, i in enumerate(idx):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeLimitReached("learned rounding stopped at the time limit")
        x = feed(calib, name, i, i + 1)
        x = {k: np.ascontiguousarray(v, np.float32 if isinstance(calib, np.ndarray) else v.dtype) for k, v in x.items()}
        acts = dict(zip(wanted, session.run(wanted, x), strict=True))
        for layer in layers:
            cols = _columns(layer, torch.from_numpy(acts[layer["node"].input[0]]))
            h, n = stats.get(layer["name"], (0, 0))
            stats[layer["name"]] = (h + torch.bmm(cols, cols.transpose(1, 2)), n + cols.shape[2])
        if k == 0:  # layers the whole set cannot sample densely enough are left to round-to-nearest: not collected
            layers = [la for la in layers
                      if stats[la["name"]][1] * len(idx) >= MIN_POSITIONS_PER_INPUT * la["depth"]]
            stats = {la["name"]: stats[la["name"]] for la in layers}
            wanted = list(dict.fromkeys(la["node"].input[0] for la in layers))
            if not layers:
                break
    return stats


def _columns(layer: dict, x):
    """The layer's input as (groups, depth, positions): im2col patches for a Conv, rows for a Gemm."""
    import torch.nn.functional as F  # noqa: N812 (torch's own spelling)

    if layer["node"].op_type == "Gemm":
        return x.reshape(x.shape[0], -1).T[None]
    a, w = layer["attrs"], layer["rows"]
    pads = list(a.get("pads", [0, 0, 0, 0]))
    x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    cols = F.unfold(x, layer["kernel"], dilation=tuple(a.get("dilations", [1, 1])),
                    stride=tuple(a.get("strides", [1, 1])))
    return cols[0].reshape(w.shape[0], w.shape[2], -1)


def _gptq(w, h, qmax: int):
    """GPTQ with the inputs taken in order of decreasing H diagonal ("act order"); w (groups, rows, D) float64."""
    import torch

    w, h = w.clone(), h.clone()
    groups, _, depth = w.shape
    scale = w.abs().amax(dim=2, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag == 0  # inputs that are always zero: their weights do nothing, so they are rounded to zero
    h[dead.unsqueeze(2) & torch.eye(depth, dtype=torch.bool)] = 1.0
    w[dead.unsqueeze(1).expand_as(w)] = 0.0
    order = torch.argsort(torch.diagonal(h, dim1=1, dim2=2), dim=1, descending=True)
    w = torch.gather(w, 2, order.unsqueeze(1).expand_as(w))
    h = torch.gather(torch.gather(h, 1, order.unsqueeze(2).expand_as(h)), 2, order.unsqueeze(1).expand_as(h))
    h = h + DAMP * torch.diagonal(h, dim1=1, dim2=2).mean(1)[:, None, None] * torch.eye(depth, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    s = scale[:, :, 0]
    for i in range(depth):
        col = w[:, :, i]
        q[:, :, i] = torch.clamp(torch.round(col / s), -qmax, qmax) * s
        err = (col - q[:, :, i]) / u[:, i, i][:, None]
        w[:, :, i:] -= err.unsqueeze(2) * u[:, i, i:].unsqueeze(1)
    return torch.gather(q, 2, torch.argsort(order, dim=1).unsqueeze(1).expand_as(q)), scale


def _keep_row_scale(w, q, scale, qmax: int):
    """Each row's largest weight back at +-qmax where the learned rounding moved it in, so that a runtime
    recomputing ``max|w| / qmax`` from the rounded weights finds the same scale (and the same integers)."""
    import torch

    top = w.abs().argmax(dim=2, keepdim=True)
    lost = ((q.abs().amax(dim=2, keepdim=True) / scale).round() < qmax) & (w.abs().amax(dim=2, keepdim=True) > 0)
    if bool(lost.any()):
        edge = torch.sign(torch.gather(w, 2, top)) * qmax * scale
        q = q.scatter(2, top, torch.where(lost, edge, torch.gather(q, 2, top)))
    return q


def _nearest(w, scale, qmax: int):
    import torch

    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def _output_error(q, w, h) -> float:
    """sum over samples of |(q - w) x|^2, from H."""
    import torch

    d = q - w
    return float(torch.einsum("grd,gde,gre->", d, h, d))
