"""ResNet's padded MaxPool and the TFLite full-integer path (tflite_prep.pad_maxpools, tflite_check).

onnx2tf pads such a MaxPool with float32's minimum; calibrated, that gives the stem a 1.33e36 scale and LiteRT
aborts the process when it prepares the model. These tests never let it get that far: tflite_check names the
broken scale first.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.backends import tflite_prep as tp


def _pool_model(relu: bool) -> onnx.ModelProto:
    """input 1x3x16x16 -> Conv3x3/2 (-> Relu) -> MaxPool 3x3/2 pad 1 (ResNet's stem) -> Conv1x1 -> GAP -> Gemm."""
    rng = np.random.default_rng(0)
    arrays = {"w1": rng.normal(0, 0.5, (8, 3, 3, 3)), "b1": rng.normal(-0.5, 0.1, 8),
              "w2": rng.normal(0, 0.5, (8, 8, 1, 1)), "w3": rng.normal(0, 0.5, (4, 8)), "b3": np.zeros(4)}
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in arrays.items()]
    stem = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2])]
    stem += [helper.make_node("Relu", ["c1"], ["a1"])] if relu else [helper.make_node("Identity", ["c1"], ["a1"])]
    nodes = [*stem,
             helper.make_node("MaxPool", ["a1"], ["p"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p", "w2"], ["c2"]),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1)]
    io = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16]),
          helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])]
    graph = helper.make_graph(nodes, "stem", io[:1], io[1:], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(path, xs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": xs[i:i + 1]})[0] for i in range(len(xs))])


def _calib(n: int = 16) -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1, (n, 3, 16, 16)).astype(np.float32)


@pytest.mark.parametrize("relu", [True, False])
def test_pad_moves_into_a_pad_node_with_the_calibrated_minimum(tmp_path, relu):
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(_pool_model(relu), src)
    xs = _calib()
    summary = tp.pad_maxpools(src, out, xs)
    model = onnx.load(str(out))
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    assert "pads" not in {a.name for a in pool.attribute}
    assert pool.input[0] == pad.output[0]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert list(inits[pad.input[1]]) == [0, 0, 1, 1, 0, 0, 1, 1]
    value = float(inits[pad.input[2]])
    assert summary["moved"] == [{"node": "maxpool", "pad_value": value}] and summary["left"] == 0
    if relu:
        assert value == 0.0
    else:  # the stem's calibrated minimum (its bias is negative, so well below 0)
        assert value < -0.5
    np.testing.assert_allclose(_run(out, xs), _run(src, xs), rtol=0, atol=1e-5)  # exact on calibration data


@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 0, 0, 0]])
def test_ceil_mode_pools_become_floor_mode_over_an_input_padded_at_the_end(tmp_path, pads):
    """SqueezeNet-style ceil_mode: the same output size and values, from a plain pool over an explicit Pad."""
    model = _pool_model(False)
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    kept = [a for a in pool.attribute if a.name != "pads"]
    del pool.attribute[:]
    pool.attribute.extend([*kept, helper.make_attribute("ceil_mode", 1), helper.make_attribute("pads", pads)])
    onnx.save(model, tmp_path / "m.onnx")
    xs = _calib(8)
    summary = tp.pad_maxpools(tmp_path / "m.onnx", tmp_path / "out.onnx", xs)
    assert len(summary["moved"]) == 1 and summary["left"] == 0
    out = onnx.load(str(tmp_path / "out.onnx"))
    pool = next(n for n in out.graph.node if n.op_type == "MaxPool")
    assert {a.name for a in pool.attribute}.isdisjoint({"pads", "ceil_mode"})
    pad = next(n for n in out.graph.node if n.op_type == "Pad")
    widths = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == pad.input[1]))
    assert list(widths) == [0, 0, pads[0], pads[1], 0, 0, pads[2] + 1, pads[3] + 1]  # 8 px: one extra end row
    np.testing.assert_allclose(_run(tmp_path / "out.onnx", xs), _run(tmp_path / "m.onnx", xs), rtol=0, atol=1e-5)


def test_auto_pad_pools_are_left_alone(tmp_path):
    model = _pool_model(True)
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    kept = [a for a in pool.attribute if a.name != "pads"]
    del pool.attribute[:]
    pool.attribute.extend([*kept, helper.make_attribute("auto_pad", "SAME_LOWER")])
    onnx.save(model, tmp_path / "m.onnx")
    summary = tp.pad_maxpools(tmp_path / "m.onnx", tmp_path / "out.onnx", _calib(4))
    assert summary["moved"] == [] and summary["left"] == 0  # no explicit pads: onnx2tf pads it itself
    assert not any(n.op_type == "Pad" for n in onnx.load(str(tmp_path / "out.onnx")).graph.node)


@pytest.mark.parametrize("relu", [True, False])
def test_padded_maxpool_converts_to_a_full_integer_tflite_that_runs(tmp_path, relu, monkeypatch):
    """With the fix: sound scales, LiteRT runs it, close to FP32. Without it (pad_maxpools made a no-op): the
    converter's model has the 1e36 scale, and the build stops with a StageError naming the op, not an abort."""
    pytest.importorskip("onnx2tf")
    pytest.importorskip("ai_edge_litert")
    from edgepack.backends import tflite, tflite_check
    from edgepack.errors import StageError

    src = tmp_path / "m.onnx"
    onnx.save(_pool_model(relu), src)
    xs = _calib()
    fp32 = tflite.convert(src, tmp_path / "w", None)
    int8 = tflite.convert(src, tmp_path / "w", xs, io_dtype="float32")
    assert tflite_check.scale_faults(int8) == []
    ref, got = tflite.TFLiteRunner(fp32).run_samples(xs), tflite.TFLiteRunner(int8).run_samples(xs)
    np.testing.assert_allclose(got, ref, atol=0.1 * np.abs(ref).max())

    def unfixed(onnx_path, out_path, calib, **kw):
        onnx.save(onnx.load(str(onnx_path)), str(out_path))
        return {"moved": [], "left": 1}

    monkeypatch.setattr(tp, "pad_maxpools", unfixed)
    with pytest.raises(StageError, match=r"absurd INT8 scale") as caught:
        tflite.convert(src, tmp_path / "broken", xs, io_dtype="float32")
    assert "MAX_POOL_2D" in caught.value.message and "e+36" in caught.value.message
    assert not (tmp_path / "broken" / "m_int8.tflite").exists()
