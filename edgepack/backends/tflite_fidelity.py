"""Is the FP32 .tflite the same function as the ONNX model it was converted from?

onnx2tf turns an NCHW ONNX graph into an NHWC TensorFlow one, guessing from shapes which axes moved. Where a
feature map's dimensions are equal (a window-attention block's 16 x 16 x 16), a guess can be wrong, and the model
it writes computes something else: a small MaxViT's FP32 .tflite differed from ONNX Runtime by more than its
logits' range (-2 dB). Every INT8 figure is then measured against a wrong reference, and nothing else notices:
INT8 and FP32 .tflite share the error. So the FP32 .tflite is run on a few calibration samples beside ONNX Runtime,
and a model whose outputs differ beyond float32 rounding stops the build, naming the first ONNX node whose
TensorFlow counterpart differs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from edgepack.errors import StageError

log = logging.getLogger(__name__)

#: SQNR, dB, the FP32 .tflite must reach against ONNX Runtime on every output. Float32 reassociation and
#: XNNPACK's kernels leave 60 dB and more (EfficientNet-Lite0: 119 dB); a wrong axis gave -2 to 10 dB.
MIN_SQNR_DB = 40.0
SAMPLES = 4            # calibration samples run through both
CAP_DB = 999.0         # identical outputs (tasks.base.SQNR_CAP_DB's value)
LOCATE_SAMPLES = 1     # the search for the first differing node runs one
#: |TensorFlow - ONNX| relative to max |ONNX| above which an intermediate tensor differs (float32: ~1e-6)
LOCATE_RTOL = 1e-3


def check(onnx_path: Path, tflite_path: Path, samples, *, scratch: Path | None = None) -> dict:
    """{"outputs": {name: SQNR dB}, "samples": n, "min_sqnr_db": limit} for ``tflite_path`` (FP32) against
    ``onnx_path`` on the first SAMPLES of ``samples``. Raises a StageError when an output is below MIN_SQNR_DB;
    with ``scratch`` (a folder it may write), the message names the first differing ONNX node (one more
    onnx2tf conversion)."""
    from edgepack.backends import onnx as onnx_backend
    from edgepack.backends.base import all_samples
    from edgepack.backends.tflite import TFLiteRunner
    from edgepack.inputs.data import num_samples, rows

    x = rows(samples, 0, min(SAMPLES, num_samples(samples)))
    ref_runner = onnx_backend.Runner(Path(onnx_path))
    names = [o.name for o in ref_runner.session.get_outputs()]
    ref = all_samples(ref_runner, x, None)
    got = all_samples(TFLiteRunner(Path(tflite_path)), x, None)
    if len(ref) != len(got):
        raise StageError(f"the FP32 .tflite has {len(got)} outputs, the ONNX model {len(ref)}",
                         hint="onnx2tf dropped or split an output; build for an ONNX target instead")
    scores = {name: round(compare(r, g), 2) for name, r, g in zip(names, ref, got, strict=True)}
    record = {"outputs": scores, "samples": num_samples(x), "min_sqnr_db": MIN_SQNR_DB}
    worst = min(scores, key=scores.get)
    if scores[worst] >= MIN_SQNR_DB:
        return record
    where = ""
    if scratch is not None:
        node = first_divergence(Path(onnx_path), Path(scratch), rows(x, 0, LOCATE_SAMPLES))
        where = f"; the first ONNX node whose TensorFlow output differs is {node}" if node else ""
    raise StageError(
        f"the FP32 .tflite does not compute what the ONNX model does: output {worst} is at {scores[worst]:.1f} dB "
        f"SQNR against ONNX Runtime (a faithful conversion gives over {MIN_SQNR_DB:.0f} dB){where}",
        hint="onnx2tf chose a wrong layout for a tensor (it guesses which axes are channels, which fails where "
             "dimensions are equal); building it at another --input-shape may avoid it, or ship ONNX INT8 "
             "(raspberry-pi-4, x86-64)")


def compare(ref: np.ndarray, got: np.ndarray) -> float:
    """SQNR, dB, of ``got`` against ``ref`` (stacked samples). When the shapes differ but the sizes agree (a layout
    onnx2tf kept), each sample's sorted values are compared: a bound that no layout can beat."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        if ref.size != got.size:
            return -float("inf")
        ref, got = np.sort(ref.reshape(len(ref), -1), axis=1), np.sort(got.reshape(len(got), -1), axis=1)
    noise, signal = float(np.sum((ref - got) ** 2)), float(np.sum(ref ** 2))
    if noise == 0.0 or not np.isfinite(noise):
        return CAP_DB if noise == 0.0 else -float("inf")
    return float(min(10.0 * np.log10(max(signal, 1e-30) / noise), CAP_DB))


def first_divergence(onnx_path: Path, scratch: Path, x) -> str | None:
    """The first ONNX node (graph order) whose float output, converted by onnx2tf, differs from ONNX Runtime's on
    ``x`` (one sample) in every layout it could be in; None when none does or the search itself fails. Every
    intermediate float tensor is made a graph output and the whole model converted once more."""
    import onnx
    import onnxruntime as ort

    from edgepack.backends import tflite

    t0 = time.perf_counter()
    try:
        model = onnx.load(str(onnx_path))
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {v.name: v for v in inferred.graph.value_info}
        finals = {o.name for o in model.graph.output}
        floats = {name for name, v in known.items() if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
        inner = [(node.name or node.op_type, out) for node in model.graph.node for out in node.output
                 if out in floats and out not in finals]
        if not inner:
            return None
        model.graph.output.extend([known[out] for _, out in inner])
        probe = scratch / "fidelity_probe.onnx"
        scratch.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(probe))
        feed = x if isinstance(x, dict) else {model.graph.input[0].name: np.asarray(x, np.float32)}
        session = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        want = dict(zip(names, session.run(None, feed), strict=True))
        keras = tflite._onnx2tf_keras(probe, scratch / "fidelity_probe", None)
        tf_in = [np.asarray(v).transpose(0, 2, 3, 1) if np.ndim(v) == 4 else np.asarray(v) for v in feed.values()]
        outs = keras(tf_in if len(tf_in) > 1 else tf_in[0])
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        if len(outs) != len(names):
            return None
        have = dict(zip(names, (np.asarray(o) for o in outs), strict=True))
        for node, out in inner:
            if not _matches(want[out], have[out]):
                log.info("first differing node %s (%s), found in %.0f s", node, out, time.perf_counter() - t0)
                return node
    except Exception as exc:  # noqa: BLE001 - a diagnosis only: the caller's error stands without it
        log.info("could not locate the differing node: %s", exc)
    return None


def _matches(ref: np.ndarray, got: np.ndarray) -> bool:
    """``got`` equals ``ref`` within LOCATE_RTOL in some layout onnx2tf may keep it in: as is, or channels-last."""
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-6)
    candidates = [got]
    if got.ndim >= 3:
        candidates.append(np.moveaxis(got, -1, 1))
    for cand in candidates:
        if cand.shape == ref.shape and float(np.max(np.abs(cand - ref))) <= LOCATE_RTOL * scale:
            return True
    if all(c.shape != ref.shape for c in candidates) and ref.size == got.size:  # a layout not tried: values only
        return float(np.max(np.abs(np.sort(ref, axis=None) - np.sort(got, axis=None)))) <= LOCATE_RTOL * scale
    return False
