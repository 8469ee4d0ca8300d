"""Activation equalization, an experiment (benchmarks/bench_activation_noise.py): per-channel rescaling of an FP32
ONNX graph that leaves its function unchanged but lets one per-tensor INT8 scale fit every channel of a feature map.
Not part of edgepack: on EfficientNet-Lite0, LRASPP and SSDLite it did not move INT8 accuracy (the table in
benchmarks/BENCHMARKS.md, section "activation-noise").

The runtimes quantize activations per tensor and weights per output channel, so a channel much narrower than its
tensor's widest gets coarse steps. Two exact rescalings, computed from per-channel calibration statistics and
applied to the weights (no node added):

- Conv -> Relu -> depthwise Conv: channel c of the first Conv is multiplied by s_c >= 1 and the depthwise filter of
  channel c divided by it (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
  Correction"). Both layers' weights are per channel, so their integers do not change. (Clip / ReLU6 is not
  scale-equivariant: rescaling through it moves its bound per channel, which changed FP32 outputs on photos
  outside the calibration set, so it is left alone.)
- a linear feature map (projection Convs and the residual Adds that sum them, read by Convs): SmoothQuant's
  s_c = max|W_c|^(1-alpha) / max|X_c|^alpha (Xiao et al. 2023), producers' output channels multiplied, readers'
  input channels divided.

``equalize`` checks the rescaled model against the original on calibration samples and returns the original when
they differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgepack.inputs.data import feed, num_samples

log = logging.getLogger(__name__)

#: largest factor a channel is scaled by (either way): beyond it the weights' own rounding takes over
MAX_SCALE = 16.0
ALPHA = 0.5
STAT_SAMPLES = 64
#: |rescaled - original| / max |original| allowed on the check samples (float32 reassociation is ~1e-6)
PARITY_RTOL = 1e-3


@dataclass
class _Pair:
    """Conv -> Relu -> depthwise Conv."""
    producer: object
    act: object
    reader: object

    @property
    def tensor(self) -> str:
        return self.act.output[0]


@dataclass
class _Stream:
    """Tensors of one linear feature map: written by Convs, summed by Adds, read by Convs."""
    tensors: list[str]
    producers: list = field(default_factory=list)
    readers: list = field(default_factory=list)


def equalize(model, calib, *, alpha: float = ALPHA, samples: int = STAT_SAMPLES,
             skip: Sequence[str] = (), progress: Callable[[str], None] | None = None):
    """(a rescaled copy of ``model``, a record); ``model`` itself and a record saying why when nothing was
    rescaled or the copy did not compute the same outputs. ``calib``: the calibration inputs (an array for one
    image input, or {name: array}); ``samples`` of them, evenly spread, give the channel ranges. Nodes named in
    ``skip`` (kept in float) are neither rescaled nor read through."""
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = work.graph
    pairs, streams = _find(g, set(skip))
    if not pairs and not streams:
        return model, {"applied": False, "why": "no Conv -> Relu -> depthwise Conv or linear Conv -> Conv"}
    n = num_samples(calib)
    idx = np.unique(np.linspace(0, n - 1, min(samples, n)).round().astype(int))
    stats = _channel_stats(model, calib, [p.tensor for p in pairs] + [t for s in streams for t in s.tensors], idx)
    inits = {t.name: t for t in g.initializer}
    done_pairs = sum(_scale_pair(p, stats[p.tensor][1], inits) for p in pairs)
    done_streams = sum(_scale_stream(s, stats, alpha, inits) for s in streams)
    record = {"applied": bool(done_pairs or done_streams), "relu_pairs": done_pairs, "linear_maps": done_streams,
              "alpha": alpha, "statistics_samples": int(len(idx))}
    if not record["applied"]:
        return model, {**record, "why": "every channel already uses its tensor's range"}
    err = _parity(model, work, calib, idx[:8])
    record["parity_error"] = float(f"{err:.3g}")
    if not err <= PARITY_RTOL:
        log.warning("activation equalization skipped: the rescaled model differs from the original by %.3g", err)
        return model, {**record, "applied": False, "why": "the rescaled model did not compute the same outputs"}
    if progress:
        progress(f"equalized {done_pairs} Relu/depthwise pairs and {done_streams} linear feature maps")
    return work, record


# ---------------------------------------------------------------------------------------------------- the graph

def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _conv_weights(node, inits) -> bool:
    """A Conv whose weight (and bias, if any) are initializers of its own (a shared one would be rescaled for
    two nodes); ``inits`` maps those names to tensors (see _find, which leaves shared ones out)."""
    return (node.op_type == "Conv" and len(node.input) >= 2 and node.input[1] in inits
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in inits))


def _depthwise(node, inits) -> bool:
    if not _conv_weights(node, inits):
        return False
    w = inits[node.input[1]]
    return int(_attr(node, "group", 1)) == w.dims[0] and w.dims[1] == 1


def _find(g, skip: set) -> tuple[list[_Pair], list[_Stream]]:  # noqa: C901

    reads: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            reads[i] = reads.get(i, 0) + 1
    inits = {t.name: t for t in g.initializer if reads.get(t.name, 0) <= 1}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    # a node may be rescaled once, as a producer and once as a reader (different axes)
    used_out: set[str] = set()
    used_in: set[str] = set()

    def only_reader(t):
        r = readers.get(t, [])
        return r[0] if len(r) == 1 and t not in outputs else None

    pairs = []
    for n in g.node:
        if not _conv_weights(n, inits) or n.name in skip:
            continue
        act = only_reader(n.output[0])
        if act is None or act.op_type != "Relu" or act.name in skip:
            continue
        reader = only_reader(act.output[0])
        if reader is None or not _depthwise(reader, inits) or reader.name in skip:
            continue
        pairs.append(_Pair(n, act, reader))
        used_out.add(n.name)
        used_in.add(reader.name)

    streams, seen = [], set()
    for n in g.node:
        if not _conv_weights(n, inits) or n.name in skip or n.name in used_out or n.output[0] in seen:
            continue
        s = _grow(n.output[0], producer, readers, inits, outputs, skip)
        if s is None:
            continue
        seen.update(s.tensors)
        if any(p.name in used_out for p in s.producers) or any(r.name in used_in for r in s.readers):
            continue
        if not any(not _depthwise(r, inits) for r in s.readers):
            continue                     # only depthwise readers: nothing to balance against (rare)
        used_out.update(p.name for p in s.producers)
        used_in.update(r.name for r in s.readers)
        streams.append(s)
    return pairs, streams


def _grow(start: str, producer, readers, inits, outputs, skip) -> _Stream | None:  # noqa: C901
    """The linear feature map ``start`` belongs to (closed under Add), or None if any of its tensors is written
    or read by something that is not a rescalable Conv or an Add of two of its tensors, or is a graph output."""
    s = _Stream([])
    todo, members = [start], set()
    while todo:
        t = todo.pop()
        if t in members:
            continue
        if t in outputs or t not in producer:
            return None
        members.add(t)
        p = producer[t]
        if p.name in skip:
            return None
        if p.op_type == "Add":
            if len(p.input) != 2:
                return None
            todo.extend(p.input)
        elif _conv_weights(p, inits):
            if p not in s.producers:
                s.producers.append(p)
        else:
            return None
        for r in readers.get(t, []):
            if r.name in skip:
                return None
            if r.op_type == "Add":
                todo.append(r.output[0])
                todo.extend(r.input)
            elif (_conv_weights(r, inits) and r.input[0] == t and t not in r.input[1:]
                  and (int(_attr(r, "group", 1)) == 1 or _depthwise(r, inits))):
                if r not in s.readers:
                    s.readers.append(r)
            else:
                return None
    if not s.readers:
        return None
    s.tensors = sorted(members)
    return s


# ---------------------------------------------------------------------------------------------------- statistics

def _channel_stats(model, calib, tensors: list[str], idx) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tensor: (per-channel max |x|, per-channel max x)} over the samples ``idx``, one sample at a time."""
    from edgepack.quantize.diagnose import _session  # the FP32 model with these tensors as outputs, unoptimised

    sess = _session(model, tensors)
    input_name = sess.get_inputs()[0].name
    stats: dict[str, list[np.ndarray]] = {}
    for i in idx:
        vals = sess.run(tensors, feed(calib, input_name, int(i), int(i) + 1))
        for t, v in zip(tensors, vals, strict=True):
            v = np.asarray(v, np.float32)
            v = np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)
            cur = (np.abs(v).max(1), v.max(1))
            old = stats.get(t)
            stats[t] = list(cur) if old is None else [np.maximum(old[0], cur[0]), np.maximum(old[1], cur[1])]
    return {t: (a, m) for t, (a, m) in stats.items()}


def _parity(a, b, calib, idx) -> float:
    import onnxruntime as ort

    def outs(m):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return [sess.run(None, feed(calib, name, int(i), int(i) + 1)) for i in idx]

    worst = 0.0
    for ra, rb in zip(outs(a), outs(b), strict=True):
        for x, y in zip(ra, rb, strict=True):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            if x.dtype.kind != "f" or not x.size:
                continue
            worst = max(worst, float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-2)))
    return worst


# ---------------------------------------------------------------------------------------------------- rescaling

def _scale_out(node, s: np.ndarray, inits) -> None:
    """Multiply output channel c of a Conv (weight and bias) by s[c]."""
    from onnx import numpy_helper

    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    shape = (-1,) + (1,) * (w.ndim - 1)
    inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * s.reshape(shape)).astype(np.float32),
                                                          node.input[1]))
    if len(node.input) > 2 and node.input[2]:
        b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        inits[node.input[2]].CopyFrom(numpy_helper.from_array((b * s).astype(np.float32), node.input[2]))


def _scale_in(node, s: np.ndarray, inits) -> None:
    """Divide input channel c of a Conv by s[c]: a depthwise filter's row c, else every filter's column c."""
    from onnx import numpy_helper

    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    if w.shape[1] == 1 and w.shape[0] == len(s):
        w = w / s.reshape((-1,) + (1,) * (w.ndim - 1))
    else:
        w = w / s.reshape((1, -1) + (1,) * (w.ndim - 2))
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), node.input[1]))


def _scale_pair(p: _Pair, chan_max: np.ndarray, inits) -> int:
    top = float(chan_max.max())
    if not top > 0:
        return 0
    s = np.where(chan_max > 0, top / np.maximum(chan_max, 1e-12), 1.0)
    s = np.clip(s, 1.0, MAX_SCALE).astype(np.float32)
    if not (s > 1.0 + 1e-3).any():
        return 0
    _scale_out(p.producer, s, inits)
    _scale_in(p.reader, s, inits)
    return 1


def _scale_stream(st: _Stream, stats, alpha: float, inits) -> int:
    from onnx import numpy_helper

    x = np.max([stats[t][0] for t in st.tensors], axis=0)
    wcols = []
    for r in st.readers:
        if _depthwise(r, inits):
            continue
        w = np.abs(numpy_helper.to_array(inits[r.input[1]]))
        wcols.append(np.moveaxis(w, 1, 0).reshape(w.shape[1], -1).max(1))
    w = np.max(wcols, axis=0)
    live = (x > 0) & (w > 0)
    if live.sum() < 2:
        return 0
    s = np.ones_like(x)
    s[live] = w[live] ** (1 - alpha) / x[live] ** alpha
    # the map's widest channel keeps its range: the scales only move the other channels
    s[live] /= s[live][np.argmax(x[live])]
    s = np.clip(s, 1.0 / MAX_SCALE, MAX_SCALE).astype(np.float32)
    if not (np.abs(np.log(s)) > 1e-3).any():
        return 0
    for pnode in st.producers:
        _scale_out(pnode, s, inits)
    for r in st.readers:
        _scale_in(r, s, inits)
    return 1
