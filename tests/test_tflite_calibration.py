"""Calibration ranges TensorFlow's TFLite calibrator records too wide (an op writing in place over its input),
narrowed by edgepack.backends.tflite_calibration before quantization."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from edgepack.backends import tflite_calibration  # noqa: E402

RNG = np.random.default_rng(0)
SAMPLES = [RNG.uniform(-5, 5, size=(1, 8, 8, 4)).astype(np.float32) for _ in range(8)]
W2 = RNG.normal(size=(1, 1, 4, 4)).astype(np.float32)


def _hard_swish_model() -> bytes:
    """Float .tflite of hard-swish spelled as XNNPACK takes it in INT8: (x * 1/6) * relu6(x + 3), between two
    1x1 convolutions (x * 1/6 feeds only the last MUL, which may overwrite it in place)."""
    w1 = tf.constant(np.eye(4, dtype=np.float32).reshape(1, 1, 4, 4) * 1.5)
    w2 = tf.constant(W2)

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 4], tf.float32)])
    def f(x):
        x = tf.nn.conv2d(x, w1, 1, "SAME")
        h = (x * (1 / 6)) * tf.nn.relu6(x + 3)
        return tf.nn.conv2d(h, w2, 1, "SAME")

    return f.get_concrete_function()


def _calibrated(repaired: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_hard_swish_model()])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s] for s in SAMPLES)
    converter._experimental_calibrate_only = True  # noqa: SLF001
    if not repaired:
        return converter.convert()
    summaries = []
    with tflite_calibration.repaired_calibration(summaries.append):
        out = converter.convert()
    assert summaries and summaries[0]["repaired"] >= 1
    return out


def _ranges(model: bytes) -> dict[str, tuple[float, float]]:
    from tensorflow.lite.python import schema_py_generated as schema

    graph = schema.Model.GetRootAs(model, 0).Subgraphs(0)
    found = {}
    for i in range(graph.TensorsLength()):
        t, q = graph.Tensors(i), graph.Tensors(i).Quantization()
        if q is not None and q.MinLength() == 1:
            found[t.Name().decode()] = (float(q.MinAsNumpy()[0]), float(q.MaxAsNumpy()[0]))
    return found


def test_the_range_of_x_over_6_is_what_it_computes_not_the_hard_swish_output():
    x = np.concatenate(SAMPLES) * 1.5   # the first convolution: x * 1.5 per channel
    sixth = (float(x.min()) / 6, float(x.max()) / 6)
    recorded = _ranges(_calibrated(False))
    repaired = _ranges(_calibrated(True))
    name = next(n for n, r in repaired.items() if np.allclose(r, sixth, atol=1e-3))
    # TensorFlow's calibrator logged x / 6 after the last MUL overwrote it: its maximum is the hard-swish output's
    assert recorded[name][1] > 3 * sixth[1]
    assert repaired[name] == pytest.approx(sixth, abs=1e-3)
    for n, (lo, hi) in repaired.items():   # nothing else widened
        assert lo >= recorded[n][0] - 1e-6 and hi <= recorded[n][1] + 1e-6


def test_repaired_ranges_give_a_more_accurate_int8_model():
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import convert as tf_convert

    def int8_error(calibrated: bytes) -> float:
        model = tf_convert.mlir_quantize(calibrated, fully_quantize=False, input_data_type=tf.float32,
                                         output_data_type=tf.float32)
        q = Interpreter(model_content=model)
        f = Interpreter(model_content=_float_model())
        err = []
        for s in SAMPLES:
            outs = []
            for it in (q, f):
                it.allocate_tensors()
                it.set_tensor(it.get_input_details()[0]["index"], s)
                it.invoke()
                outs.append(it.get_tensor(it.get_output_details()[0]["index"]).copy())
            err.append(np.mean((outs[0] - outs[1]) ** 2))
        return float(np.mean(err))

    assert int8_error(_calibrated(True)) < 0.5 * int8_error(_calibrated(False))


def _float_model() -> bytes:
    return tf.lite.TFLiteConverter.from_concrete_functions([_hard_swish_model()]).convert()


def test_repair_never_widens_a_range():
    calibrated = bytearray(_calibrated(False))
    before = _ranges(bytes(calibrated))
    fixed, summary = tflite_calibration.repair(bytes(calibrated), [[s * 10] for s in SAMPLES])  # values 10x wider
    after = _ranges(fixed)
    assert summary["tensors"] == len([n for n in before if n in after])
    for n, (lo, hi) in after.items():
        assert lo >= before[n][0] - 1e-6 and hi <= before[n][1] + 1e-6
