"""Tests for edgepack.backends.tflite_prep: the TFLite weight-rounding rule and bias correction."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import toy_models
from onnx import TensorProto, helper, numpy_helper

from edgepack.backends import tflite_prep as tp


def _model(opset: int = 17, gemm_trans_b: int = 1) -> onnx.ModelProto:
    """input 1x3x12x12 -> Conv3x3 (no bias) -> Relu -> depthwise Conv3x3 (bias) -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (6, 1, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 6).astype(np.float32)
    w3 = rng.normal(0, 0.5, (4, 6) if gemm_trans_b else (6, 4)).astype(np.float32)
    b3 = np.zeros(4, np.float32)
    arrays = {"w1": w1, "w2": w2, "b2": b2, "w3": w3, "b3": b3}
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=6),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=gemm_trans_b),
    ]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _calib(n: int = 24) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (n, 3, 12, 12)).astype(np.float32) + 0.3


def _outputs(model: onnx.ModelProto, names: list[str], xs: np.ndarray) -> list[np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = [sess.run(None, {"input": xs[i:i + 1]}) for i in range(len(xs))]
    return [np.concatenate([r[j] for r in rows]) for j in range(len(names))]


def _rounded(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every Conv/Gemm weight rounded like the TFLite converter (the INT8 model's weights)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    for t in tp._targets(m):
        inits[t.node.input[1]].CopyFrom(numpy_helper.from_array(t.weight + t.eps, t.node.input[1]))
    return m


def test_weight_rule_matches_tflite_converter():
    w = np.array([[0.5, -1.0, 0.26], [0.0, 0.0, 0.0], [2.0, 0.01, -0.02]], np.float32)
    q = tp.tflite_weight_quant(w, axis=0)
    scale = np.array([1.0, 0.0, 2.0]) / 127
    np.testing.assert_allclose(q[0], np.round(w[0] / scale[0]) * scale[0], rtol=1e-6)
    assert np.all(q[1] == 0)  # all-zero channel stays zero, no division by zero
    assert q[0, 1] == pytest.approx(-1.0) and q[2, 0] == pytest.approx(2.0)  # max|w| is exact (+-127)
    # per channel along another axis (Gemm with transB=0: output channel is axis 1)
    np.testing.assert_allclose(tp.tflite_weight_quant(w.T, axis=1), q.T)


@pytest.mark.parametrize("opset,trans_b,rounds", [(17, 1, 1), (18, 0, 1), (17, 1, 2)])
def test_bias_correction_removes_the_mean_shift_of_weight_rounding(tmp_path, opset, trans_b, rounds):
    model = _model(opset, trans_b)
    src, dst = tmp_path / "fp32.onnx", tmp_path / "prep.onnx"
    onnx.save(model, src)
    before = src.read_bytes()
    xs = _calib()
    summary = tp.bias_correct(src, dst, xs, samples=len(xs), rounds=rounds)
    assert src.read_bytes() == before  # the FP32 reference is untouched
    assert summary["corrected_nodes"] == 3 and summary["samples"] == len(xs) and summary["rounds"] == rounds
    prep = onnx.load(dst)
    onnx.checker.check_model(prep)
    # weights identical (the converter rounds them itself); conv1 got a bias it did not have
    orig_w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("w")}
    new = {t.name: numpy_helper.to_array(t) for t in prep.graph.initializer}
    for name, w in orig_w.items():
        np.testing.assert_array_equal(new[name], w)
    conv1 = next(n for n in prep.graph.node if n.name == "conv1")
    assert len(conv1.input) == 3 and conv1.input[2] in new

    names = ["c1", "c2", "logits"]
    ref = _outputs(model, names, xs)
    plain = _outputs(_rounded(model), names, xs)
    fixed = _outputs(_rounded(prep), names, xs)
    for r, p, f in zip(ref, plain, fixed, strict=True):
        axes = (0, 2, 3) if r.ndim == 4 else (0,)
        shift_plain = np.abs((p - r).mean(axes)).max()
        shift_fixed = np.abs((f - r).mean(axes)).max()
        assert shift_fixed < 0.2 * shift_plain + 1e-6
    # the first layer sees the true input, so its correction is exact on the calibration samples
    np.testing.assert_allclose(fixed[0].mean((0, 2, 3)), ref[0].mean((0, 2, 3)), atol=1e-5)
    # and the float model itself changed only by the (small) corrections
    prep_float = _outputs(prep, ["logits"], xs)[0]
    assert np.abs(prep_float - ref[2]).max() < 0.1 * np.abs(ref[2]).max()


def test_activation_aware_variant(tmp_path):
    src = tmp_path / "fp32.onnx"
    onnx.save(_model(), src)
    act = tp.bias_correct(src, tmp_path / "b.onnx", _calib(8), rounds=2, activations=True)
    assert act["rounds"] == 2 and act["activations"] is True
    onnx.checker.check_model(onnx.load(tmp_path / "b.onnx"))


def test_model_without_targets_is_copied(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    summary = tp.bias_correct(tmp_path / "m.onnx", tmp_path / "out.onnx", np.zeros((4, 1, 3), np.float32))
    assert summary["corrected_nodes"] == 0 and (tmp_path / "out.onnx").is_file()


def test_tflite_convert_uses_the_corrected_copy(tmp_path):
    """INT8 conversion goes through the corrected copy; FP32 keeps its own SavedModel; opt-out works."""
    pytest.importorskip("onnx2tf")
    pytest.importorskip("ai_edge_litert")
    from edgepack.backends import tflite

    src = tmp_path / "fp32.onnx"
    onnx.save(_model(), src)
    xs = _calib(16)
    work = tmp_path / "work"
    fp32 = tflite.convert(src, work, None)
    int8 = tflite.convert(src, work, xs, io_dtype="float32")
    assert (work / "int8_prep.json").is_file() and (work / "fp32_int8_prep.onnx").is_file()
    assert (work / "saved_model").is_dir() and (work / "saved_model_int8_prep").is_dir()
    ref = tflite.TFLiteRunner(fp32).run_samples(xs)
    out = tflite.TFLiteRunner(int8).run_samples(xs)
    np.testing.assert_allclose(out, ref, atol=0.15 * np.abs(ref).max())
    plain = tflite.convert(src, tmp_path / "plain", xs, io_dtype="float32", bias_correction=False)
    assert plain.is_file() and not (tmp_path / "plain" / "int8_prep.json").exists()


def _hard_activation_model(tmp_path):
    from edgepack.backends import onnx as onnx_backend

    torch.manual_seed(0)
    raw, path = tmp_path / "raw.onnx", tmp_path / "m.onnx"
    onnx_backend.export(toy_models.HardActivations().eval(), (1, 3, 16, 16), raw, opset=17)
    onnx_backend.simplify(raw, path)
    return path


def test_hard_activations_are_respelled_with_the_same_float_function(tmp_path):
    from edgepack.backends import onnx as onnx_backend

    path = _hard_activation_model(tmp_path)
    out = tmp_path / "r.onnx"
    counts = tp.delegate_friendly_activations(path, out)
    assert counts == {"HardSwish": 1, "HardSigmoid": 1, "hard-swish pattern": 1}
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "HardSwish" not in ops and "HardSigmoid" not in ops and "Div" not in ops
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32) * 3
    np.testing.assert_allclose(onnx_backend.Runner(out).run_samples(x), onnx_backend.Runner(path).run_samples(x),
                               rtol=1e-5, atol=1e-6)
    same = tmp_path / "same.onnx"  # a model without them is copied as it is
    assert not any(tp.delegate_friendly_activations(out, same).values())


@pytest.mark.slow
def test_full_integer_hard_activations_stay_in_one_xnnpack_partition(tmp_path):
    """LiteRT 2.1's XNNPACK takes neither INT8 HARD_SWISH nor RELU_0_TO_1: converted as they are, each one cuts
    the delegated graph (3 partitions here); respelled, the whole model is one XNNPACK partition."""
    pytest.importorskip("onnx2tf")
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.backends import tflite

    path = _hard_activation_model(tmp_path)
    x = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    int8 = tflite.convert(path, tmp_path / "w", x)
    interp = Interpreter(model_path=str(int8), num_threads=1)
    interp.allocate_tensors()
    assert [op["op_name"] for op in interp._get_ops_details()].count("DELEGATE") == 1
    assert not {"HARD_SWISH", "RELU_0_TO_1"} & {op["op_name"] for op in interp._get_ops_details()}


def test_int8_onnx_runs_hard_activations_as_integer_ops_and_keeps_what_it_is_told(tmp_path):
    """ONNX Runtime has no INT8 HardSigmoid, HardSwish or Div: quantized as exported they run in float between
    Q/DQ pairs. quantize_onnx quantizes the respelled copy (Add, Clip, Mul: QLinear kernels), the same function
    in float; a node the caller keeps in float keeps its own spelling."""
    from edgepack.backends import onnx as onnx_backend
    from edgepack.backends.onnx_quantize import quantize_onnx

    path = _hard_activation_model(tmp_path)
    x = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    info = quantize_onnx(path, tmp_path / "q.onnx", x)
    assert info["hard_activations"] == {"HardSwish": 1, "HardSigmoid": 1, "hard-swish pattern": 1}
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert not {"HardSwish", "HardSigmoid", "Div"} & ops
    assert not list(tmp_path.glob("*.activations.onnx"))   # the respelled copy is not left behind
    ref = onnx_backend.Runner(path).run_samples(x)
    got = onnx_backend.Runner(tmp_path / "q.onnx").run_samples(x)
    assert 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()) > 20
    sigmoid = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "HardSigmoid")
    info = quantize_onnx(path, tmp_path / "k.onnx", x, exclude_nodes=[sigmoid])
    assert info["hard_activations"]["HardSigmoid"] == 0
    assert sigmoid in {n.name for n in onnx.load(str(tmp_path / "k.onnx")).graph.node}
