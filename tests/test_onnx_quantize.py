"""edgepack.backends.onnx_quantize.fold_constant_muls: a multiplication by a positive scalar constant between
DequantizeLinear and QuantizeLinear goes into the DequantizeLinear's scale (one QLinearMul fewer in ONNX Runtime),
the same real values, and nothing else is touched."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import toy_models  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgepack.backends import onnx_quantize  # noqa: E402

S_A, Z_A = 0.02, 128


def _qdq_model(c=0.5, *, const_first=False, quantized_const=False, out_is_dq_b=False, extra=(), chain=False):
    """x -> Q_a -> DQ_a -> Mul(c) -> Q_b -> DQ_b -> Relu -> y (``out_is_dq_b``: DQ_b's output is y itself);
    ``chain``: a second Mul by c after DQ_b; ``extra``: more nodes and graph outputs ("nodes", "outputs")."""
    c = np.asarray(c, np.float32)
    inits = [numpy_helper.from_array(np.array(S_A, np.float32), "s_a"),
             numpy_helper.from_array(np.array(Z_A, np.uint8), "z_a"),
             numpy_helper.from_array(np.array(S_A * float(c.ravel()[0]), np.float32), "s_b"),
             numpy_helper.from_array(np.array(Z_A, np.uint8), "z_b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_a", "z_a"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_a", "z_a"], ["xd"])]
    if quantized_const:  # what quantize_static makes of the constant: uint8 255 x c / 255
        inits += [numpy_helper.from_array(np.array(255, np.uint8), "c_q"),
                  numpy_helper.from_array((c / 255).astype(np.float32), "c_s"),
                  numpy_helper.from_array(np.array(0, np.uint8), "c_z")]
        nodes.append(helper.make_node("DequantizeLinear", ["c_q", "c_s", "c_z"], ["c"]))
    else:
        inits.append(numpy_helper.from_array(c, "c"))
    last = "y" if out_is_dq_b else "d"
    nodes += [helper.make_node("Mul", ["c", "xd"] if const_first else ["xd", "c"], ["m"], name="mul"),
              helper.make_node("QuantizeLinear", ["m", "s_b", "z_b"], ["mq"]),
              helper.make_node("DequantizeLinear", ["mq", "s_b", "z_b"], [last])]
    if chain:
        inits.append(numpy_helper.from_array(np.array(S_A * float(c) ** 2, np.float32), "s_c"))
        nodes += [helper.make_node("Mul", [last, "c"], ["m2"], name="mul2"),
                  helper.make_node("QuantizeLinear", ["m2", "s_c", "z_b"], ["m2q"]),
                  helper.make_node("DequantizeLinear", ["m2q", "s_c", "z_b"], [last := "d2"])]
    if not out_is_dq_b:
        nodes.append(helper.make_node("Relu", [last], ["y"]))
    extra = dict(extra)
    nodes += extra.get("nodes", [])
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 4, 5, 5])
               for o in ("y", *extra.get("outputs", []))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})


def _x():
    return np.random.default_rng(0).uniform(-2.5, 2.5, (1, 4, 5, 5)).astype(np.float32)


@pytest.mark.parametrize("const_first", [False, True])
@pytest.mark.parametrize("quantized_const", [False, True])
@pytest.mark.parametrize("out_is_dq_b", [False, True])
def test_a_constant_multiplication_goes_into_the_dequantize_scale(const_first, quantized_const, out_is_dq_b):
    model = _qdq_model(1 / 6, const_first=const_first, quantized_const=quantized_const, out_is_dq_b=out_is_dq_b)
    before = _run(model, _x())
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert onnx_quantize.fold_constant_muls(folded) == 1
    onnx.checker.check_model(folded)
    ops = [n.op_type for n in folded.graph.node]
    assert ops == ["QuantizeLinear", "DequantizeLinear"] + ([] if out_is_dq_b else ["Relu"])
    assert [o.name for o in folded.graph.output] == ["y"]
    dq = folded.graph.node[1]
    inits = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    assert dq.input[0] == "xq" and inits[dq.input[2]] == Z_A
    assert inits[dq.input[1]] == pytest.approx(S_A / 6, rel=1e-6)
    assert set(inits) == {"s_a", "z_a", dq.input[1]}   # the constant and Q_b/DQ_b's scales went with their nodes
    # s_b = c x s_a here, so Q_b's rounding was exact: the same numbers (up to float rounding of the scale)
    np.testing.assert_allclose(_run(folded, _x())[0], before[0], rtol=1e-6, atol=1e-7)


def test_chained_constant_multiplications_fold_into_one_dequantize():
    model = _qdq_model(0.5, chain=True)
    before = _run(model, _x())
    assert onnx_quantize.fold_constant_muls(model) == 2
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "DequantizeLinear", "Relu"]
    np.testing.assert_allclose(_run(model, _x())[0], before[0], rtol=1e-6, atol=1e-7)


def test_two_constant_multiplications_of_one_activation_both_fold():
    model = _qdq_model(0.5, extra={"outputs": ["e"], "nodes": [
        helper.make_node("Mul", ["xd", "c"], ["m3"]),
        helper.make_node("QuantizeLinear", ["m3", "s_b", "z_b"], ["m3q"]),
        helper.make_node("DequantizeLinear", ["m3q", "s_b", "z_b"], ["e"])]})
    before = _run(model, _x())
    assert onnx_quantize.fold_constant_muls(model) == 2
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "DequantizeLinear", "Relu", "DequantizeLinear"]
    for got, want in zip(_run(model, _x()), before, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_dq_a_read_by_another_node_stays():
    extra = {"nodes": [helper.make_node("Relu", ["xd"], ["r"])], "outputs": ["r"]}
    model = _qdq_model(0.25, extra=extra)
    assert onnx_quantize.fold_constant_muls(model) == 1
    assert [n.op_type for n in model.graph.node].count("DequantizeLinear") == 2
    assert [n.op_type for n in model.graph.node].count("Mul") == 0


@pytest.mark.parametrize("case", ["negative", "zero", "not scalar", "rank 1", "mul read twice", "mul is output",
                                  "q_b read by a float op", "per-channel dq_a", "q_b clips"])
def test_what_is_not_a_foldable_constant_multiplication_is_left_alone(case):
    c = {"negative": -0.5, "zero": 0.0, "not scalar": [0.5, 0.5, 0.5, 0.5], "rank 1": [0.5]}.get(case, 0.5)
    if case == "not scalar":
        c = np.reshape(c, (1, 4, 1, 1))
    extra = {"mul read twice": {"nodes": [helper.make_node("Relu", ["m"], ["r"])], "outputs": ["r"]},
             "mul is output": {"outputs": ["m"]},
             "q_b read by a float op": {"nodes": [helper.make_node("Cast", ["mq"], ["r"], to=TensorProto.FLOAT)],
                                        "outputs": ["r"]}}.get(case, {})
    model = _qdq_model(c, extra=extra)
    if case == "per-channel dq_a":
        model.graph.initializer.extend([numpy_helper.from_array(np.full(4, S_A, np.float32), "s_pc"),
                                        numpy_helper.from_array(np.full(4, Z_A, np.uint8), "z_pc")])
        model.graph.node[1].input[1:] = ["s_pc", "z_pc"]
    if case == "q_b clips":  # a Relu after the Mul, removed by the quantizer: only Q_b's range [0, ...] applies it
        zero = next(t for t in model.graph.initializer if t.name == "z_b")
        zero.CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), "z_b"))
    copy = model.SerializeToString()
    assert onnx_quantize.fold_constant_muls(model) == 0
    assert model.SerializeToString() == copy


def test_quantize_onnx_folds_the_hard_activations_constant_multiplications(tmp_path, monkeypatch):
    """quantize_onnx respells hard-swish and hard-sigmoid with a Mul by 1/6 each; after the fold ONNX Runtime runs
    two QLinearMul fewer and no float op more, and the outputs are as close to FP32 as without the fold."""
    from edgepack.backends import onnx as onnx_backend

    torch.manual_seed(0)
    fp32 = tmp_path / "m.onnx"
    onnx_backend.export(toy_models.HardActivations().eval(), (1, 3, 16, 16), fp32, opset=17)
    x = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    info = onnx_quantize.quantize_onnx(fp32, tmp_path / "fold.onnx", x)
    monkeypatch.setattr(onnx_quantize, "fold_constant_muls", lambda model: 0)
    plain = onnx_quantize.quantize_onnx(fp32, tmp_path / "plain.onnx", x)
    assert info["folded_muls"] == 2 and plain["folded_muls"] == 0

    def muls(name):
        return [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node].count("Mul")

    assert muls("fold.onnx") == muls("plain.onnx") - 2
    assert info["ort_fused_ops"]["QLinearMul"] == plain["ort_fused_ops"]["QLinearMul"] - 2
    assert info["ort_float_compute_ops"] == plain["ort_float_compute_ops"]
    ref = onnx_backend.Runner(fp32).run_samples(x)

    def sqnr(name):
        got = onnx_backend.Runner(tmp_path / name).run_samples(x)
        return 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())

    assert sqnr("fold.onnx") > 20 and sqnr("fold.onnx") >= sqnr("plain.onnx") - 0.1
