"""Calibration ranges the TFLite converter records wrongly, found and narrowed before the model is quantized.

TensorFlow's TFLite calibrator (``tensorflow.lite.python.optimize.calibrator``, TF 2.19) runs the float model
once per representative sample and logs each op's input and output ranges. LiteRT's interpreter lets an op write
its output into the buffer of an input that nothing else reads (in place: elementwise MUL and ADD, a residual
sum, the scaling of a squeeze-and-excitation block). The calibrator then logs that input after the op has
overwritten it, so the input's range becomes the union of its own values and the op's output. Measured on the
SSDLite shapes detector (its hard-swish spelled ``(x / 6) * relu6(x + 3)``): ``x / 6`` spans -0.75 .. 0.94 and
was recorded as -0.75 .. 5.63 (the hard-swish output's maximum), a residual branch -17.2 .. 12.2 was recorded as
-28.0 .. 17.8, and 38 of 255 ranges were wider than the model ever computes. A range recorded 6x too wide is an
INT8 step 6x too coarse: that model's output SQNR was 20.1 dB as recorded and 23.3 dB repaired, its mAP@0.5 drop
0.75 and 0.47 points (benchmarks/bench_tflite_calibration.py, 1,000 test scenes).

`repair` runs the calibrated float model again on the same samples with every tensor kept
(``experimental_preserve_all_tensors``: no buffer is shared), and narrows each recorded range to the values the
tensor really took. It only narrows: in-place overwriting can only widen a recorded range, and where the
observed values reach past the recorded ones (they should not) the recorded range stays. The quantizer then
reads the repaired min/max as it would have read the converter's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np

log = logging.getLogger(__name__)

#: A recorded range is repaired when the observed one is narrower by more than this share of its width.
TOLERANCE = 1e-3


def _ranged_tensors(model) -> list[int]:
    """Indices of subgraph 0's float32 tensors that carry one calibrated min/max (activations, not constants)."""
    graph = model.Subgraphs(0)
    found = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        q = t.Quantization()
        if t.Type() == 0 and q is not None and q.MinLength() == 1 and q.MaxLength() == 1:  # 0: FLOAT32
            found.append(i)
    return found


def observed_ranges(calibrated: bytes, samples: Iterable, indices: list[int]) -> dict[int, tuple[float, float]]:
    """Min and max of each tensor in ``indices`` over ``samples`` (as the representative dataset yields them: a
    list of input arrays, or a dict for a signature's named inputs), every intermediate kept."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=bytes(calibrated), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    inputs = interp.get_input_details()
    lo = np.full(len(indices), np.inf)
    hi = np.full(len(indices), -np.inf)
    for sample in samples:
        if isinstance(sample, dict):
            interp.get_signature_runner()(**sample)
        else:
            if len(sample) != len(inputs):
                raise ValueError(f"a sample has {len(sample)} arrays for {len(inputs)} inputs")
            for detail, array in zip(inputs, sample, strict=True):
                interp.set_tensor(detail["index"], np.asarray(array, detail["dtype"]))
            interp.invoke()
        for k, i in enumerate(indices):
            v = interp.get_tensor(i)
            if v.size:
                lo[k] = min(lo[k], float(v.min()))
                hi[k] = max(hi[k], float(v.max()))
    return {i: (lo[k], hi[k]) for k, i in enumerate(indices) if np.isfinite(lo[k]) and np.isfinite(hi[k])}


def repair(calibrated: bytes, samples: Iterable) -> tuple[bytes, dict]:
    """``calibrated`` (the converter's calibrate-only flatbuffer) with each recorded range narrowed to the values
    its tensor took on ``samples``; and a summary {tensors, repaired, widest: [(name, recorded, observed)...]}."""
    from tensorflow.lite.python import schema_py_generated as schema

    buf = bytearray(calibrated)
    model = schema.Model.GetRootAs(buf, 0)
    indices = _ranged_tensors(model)
    seen = observed_ranges(buf, samples, indices)
    graph = model.Subgraphs(0)
    fixed = []
    for i, (lo, hi) in seen.items():
        q = graph.Tensors(i).Quantization()
        rmin, rmax = q.MinAsNumpy(), q.MaxAsNumpy()   # views into buf: written in place
        width = float(rmax[0] - rmin[0])
        if width <= 0 or lo < rmin[0] - TOLERANCE * width or hi > rmax[0] + TOLERANCE * width:
            continue   # only narrow: observed values past the recorded range are not the in-place fault
        new_lo, new_hi = min(lo, 0.0) if rmin[0] <= 0 else lo, max(hi, 0.0) if rmax[0] >= 0 else hi
        if (new_lo - rmin[0]) + (rmax[0] - new_hi) <= TOLERANCE * width:
            continue
        fixed.append((graph.Tensors(i).Name().decode(), (float(rmin[0]), float(rmax[0])), (new_lo, new_hi),
                      width / max(new_hi - new_lo, 1e-12)))
        rmin[0], rmax[0] = new_lo, new_hi
    fixed.sort(key=lambda row: -row[3])
    summary = {"tensors": len(indices), "repaired": len(fixed),
               "widest": [{"tensor": n, "recorded": [round(a, 4) for a in r], "observed": [round(a, 4) for a in o],
                           "ratio": round(x, 2)} for n, r, o, x in fixed[:5]]}
    if fixed:
        log.info("TFLite calibration: %d of %d recorded ranges were wider than the model computes (in-place "
                 "overwriting); narrowed, the widest %.1fx", len(fixed), len(indices), fixed[0][3])
    return bytes(buf), summary


@contextlib.contextmanager
def repaired_calibration(record: Callable[[dict], None] | None = None) -> Iterator[None]:
    """While active, TensorFlow's TFLite calibrator returns `repair`ed ranges: every ``TFLiteConverter.convert``
    with a representative dataset (full-integer or calibrate-only) quantizes from them. ``record`` gets each
    summary. The calibrator's own code is not changed; its ``calibrate`` is wrapped for the duration."""
    from tensorflow.lite.python.optimize import calibrator

    original = calibrator.Calibrator.calibrate

    def calibrate(self, dataset_gen):
        calibrated = original(self, dataset_gen)
        try:
            fixed, summary = repair(calibrated, dataset_gen())
        except Exception as exc:  # noqa: BLE001 - the converter's own ranges are still a valid model
            log.warning("TFLite calibration: the recorded ranges could not be checked (%s); using them as recorded",
                        exc)
            return calibrated
        if record is not None:
            record(summary)
        return fixed

    calibrator.Calibrator.calibrate = calibrate
    try:
        yield
    finally:
        calibrator.Calibrator.calibrate = original
