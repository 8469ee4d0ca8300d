"""Full-integer .tflite variants with the layers INT8 hurts most kept in float (TensorFlow's selective quantization).

Some networks do not survive full-integer INT8 in LiteRT as a whole: a MaxViT's LayerNorms are split by the
converter into MEAN, SUB, RSQRT and MUL ops, each on one per-tensor INT8 scale, and its logits came out at 4.6 dB
against FP32 (agreement 0.28) where ONNX INT8, which leaves LayerNorm in float, agreed on 91 %. TensorFlow's own
QuantizationDebugger measures each quantized op's error with float inputs (its RMSE over its output scale), and
its MLIR quantizer keeps named ops in float (``denylisted_nodes``). The model is calibrated once; every variant
(the k worst ops in float, for each k asked) is quantized from that one calibration, which takes seconds.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from edgepack.backends.tflite_graph import ops, with_readers
from edgepack.isolate import mark

log = logging.getLogger(__name__)

#: samples the debugger runs (evenly spread over the calibration set): the ranking needs few
RANKING_SAMPLES = 16


def variants(saved: Path, out_dir: Path, calib, io_dtype: str, steps: tuple[int, ...],
             float_tail: bool = False) -> list[dict]:
    """[{"float_layers": k, "path": .tflite, "layers": [op output names kept in float]}] for each k of ``steps``
    (the last one clipped to the number of quantized ops), from the FP32 model's SavedModel ``saved`` calibrated on
    ``calib``. Not from the bias-corrected INT8 copy: its biases are right only for INT8 weights, and the ops kept
    in float would carry them. ``float_tail``: the variants keep that model's float tail too."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tf_convert

    from edgepack.backends import tflite, tflite_calibration

    if not saved.is_dir():
        raise FileNotFoundError(f"no SavedModel at {saved}")
    out_dir.mkdir(parents=True, exist_ok=True)
    mark("TFLite converter: calibrate once for the layers-in-float variants")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = tflite._representative(calib)  # noqa: SLF001
    converter._experimental_calibrate_only = True  # noqa: SLF001 - TensorFlow's selective-quantization path
    with tflite_calibration.repaired_calibration():
        calibrated = converter.convert()
    tail = tflite.float_tail_nodes(calibrated) if float_tail else []
    mark("TFLite QuantizationDebugger: each op's INT8 error")
    ranked = [name for name in rank(saved, calib) if name not in tail]
    graph = ops(calibrated)
    made = []
    for k in steps:
        k = min(k, len(ranked) // 2)   # a variant keeps most of its ops INT8: with all of them float it is FP32
        if not k or (made and k == made[-1]["float_layers"]):
            break
        names = with_readers(graph, ranked[:k])
        mark(f"TFLite MLIR quantizer: {k} op(s) in float")
        data = tf_convert.mlir_quantize(
            calibrated, fully_quantize=not float_tail, input_data_type=getattr(tf, io_dtype),
            output_data_type=tf.float32 if float_tail else getattr(tf, io_dtype), denylisted_nodes=tail + names)
        rewrites: dict = {}
        path = tflite._write(out_dir / f"float_layers_{k}.tflite", data, respell=True,  # noqa: SLF001 - compacted,
                             rewrites=rewrites)                  # XNNPACK rewrites: as the all-INT8 file is written
        made.append({"float_layers": k, "path": path, "layers": names, "xnnpack_rewrites": rewrites})
    return made


def rank(saved_model: Path, calib) -> list[str]:
    """Output tensor names of the quantizable ops, worst first, as TensorFlow's QuantizationDebugger measures them on
    RANKING_SAMPLES calibration samples: by ``channel_nsr`` (the op's INT8 output against its float output, per
    channel), ties by the RMSE over the output scale that TensorFlow's own guide ranks by."""
    import tensorflow as tf

    from edgepack.backends import tflite, tflite_calibration
    from edgepack.inputs.data import num_samples, take
    from edgepack.util import spread_indices

    subset = take(calib, spread_indices(num_samples(calib), min(RANKING_SAMPLES, num_samples(calib))))
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = tflite._representative(subset)  # noqa: SLF001
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"channel_nsr": channel_nsr})
    with tflite_calibration.repaired_calibration():  # it calibrates when made
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=tflite._representative(subset), debug_options=options)  # noqa: SLF001
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    scored = []
    for row in csv.DictReader(dump):
        try:
            nsr = float(row.get("channel_nsr") or 0.0)
            step_error = float(np.sqrt(float(row["mean_squared_error"])) / float(row["scale"]))
        except (KeyError, ValueError, ZeroDivisionError):
            continue
        if np.isfinite(nsr) and np.isfinite(step_error):
            scored.append((nsr, step_error, row["tensor_name"]))
    scored.sort(key=lambda s: (-s[0], -s[1], s[2]))
    return [name for *_, name in scored]


#: a channel's noise-to-signal ratio is counted up to this (a channel INT8 rounds to nothing scores 1)
NSR_CAP = 10.0


def channel_nsr(floats, quants, scale: float, zero_point: int) -> float:
    """Mean over output channels (the last axis) of the INT8 output's noise-to-signal power ratio against the float
    output of the same op. Per channel, because one activation scale per tensor starves the small channels beside
    a large one (an outlier channel: the others get a few INT8 steps); an error over the output scale does not see
    that, as each value is still within a step or two."""
    f = np.concatenate([np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1] if np.ndim(a) else 1) for a in floats])
    q = np.concatenate([(np.asarray(a, np.int64).reshape(-1, np.shape(a)[-1] if np.ndim(a) else 1) - zero_point)
                        * float(scale) for a in quants])
    if f.shape != q.shape or not f.size:
        return 0.0
    power = np.mean(f ** 2, axis=0)
    noise = np.mean((q - f) ** 2, axis=0)
    floor = max(float(np.max(power)) * 1e-6, 1e-30)  # a dead channel (all zero) is not a starved one
    return float(np.mean(np.minimum(noise / np.maximum(power, floor), NSR_CAP)))
