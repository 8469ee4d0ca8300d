"""edgepack.backends.onnx_fold: a constant scale/shift after a Conv folds into it (ONNX Runtime's fusions), the
same function, and nothing else changes."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgepack.backends import onnx_fold  # noqa: E402


def _model(nodes, consts: dict, bias: bool = True, extra_outputs=()):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"))
    inits += [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()]
    conv = helper.make_node("Conv", ["x", "w", "b"] if bias else ["x", "w"], ["c"], pads=[1, 1, 1, 1],
                            name="conv")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", *extra_outputs)]
    graph = helper.make_graph([conv, *nodes], "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_paddle_style_scalar_affine_folds_into_the_conv():
    # PP-LCNetV3's learnable affine block as Paddle exports it: the (1,)-shaped scalar first, then a Relu
    nodes = [helper.make_node("Mul", ["s", "c"], ["m"]), helper.make_node("Add", ["t", "m"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    model = _model(nodes, {"s": [1.7], "t": [-0.3]})
    folded, gone = onnx_fold.fold(model)
    assert gone == 2
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu"]
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Mul", "Add", "Relu"]   # the input is not changed


@pytest.mark.parametrize("bias", [True, False])
def test_per_channel_constants_and_a_conv_without_bias(bias):
    nodes = [helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["y"])]
    model = _model(nodes, {"s": np.arange(1, 5).reshape(1, 4, 1, 1), "t": np.arange(4).reshape(4, 1, 1)}, bias=bias)
    folded, gone = onnx_fold.fold(model)
    assert gone == 2 and [n.op_type for n in folded.graph.node] == ["Conv"]
    x = np.random.default_rng(2).normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)


def test_what_is_not_a_per_channel_affine_of_the_conv_alone_stays():
    x = np.random.default_rng(3).normal(size=(1, 3, 8, 8)).astype(np.float32)
    # the conv's output is read by another node too: folding would change what that node sees
    shared = _model([helper.make_node("Mul", ["c", "s"], ["y"]), helper.make_node("Relu", ["c"], ["r"])],
                    {"s": [2.0]}, extra_outputs=("r",))
    # a per-pixel constant is not a per-channel one
    spatial = _model([helper.make_node("Mul", ["c", "s"], ["y"])], {"s": np.full((1, 1, 8, 8), 2.0)})
    # the conv's output is itself a graph output
    exposed = _model([helper.make_node("Mul", ["c", "s"], ["y"])], {"s": [2.0]}, extra_outputs=("c",))
    for model in (shared, spatial, exposed):
        folded, gone = onnx_fold.fold(model)
        assert gone == 0 and folded is model
        assert len(_run(model, x)) == len(model.graph.output)


def test_a_constant_another_node_reads_is_copied_not_changed():
    nodes = [helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Mul", ["m", "s"], ["y"])]
    model = _model(nodes, {"s": [3.0]})
    folded, gone = onnx_fold.fold(model)
    assert gone == 2 and [n.op_type for n in folded.graph.node] == ["Conv"]
    x = np.random.default_rng(4).normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-4)


def _lab_model(pad_second: bool, bias_second: bool = True):
    """conv -> relu -> s * x + t (PP-LCNetV3's learnable affine block after an activation) -> conv2, whose padding
    decides whether the shift can go into it too; a graph output after conv2."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(5, 4, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.asarray([0.7], np.float32), "s"),
             numpy_helper.from_array(np.asarray([-0.4], np.float32), "t")]
    if bias_second:
        inits.append(numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "b2"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Mul", ["s", "r"], ["m"]), helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Conv", ["a", "w2", "b2"] if bias_second else ["a", "w2"], ["y"],
                              pads=[1, 1, 1, 1] if pad_second else [0, 0, 0, 0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("bias_second", [True, False])
def test_scalar_affine_after_an_activation_folds_into_an_unpadded_next_conv(bias_second):
    model = _lab_model(pad_second=False, bias_second=bias_second)
    folded, gone = onnx_fold.fold_forward(model)
    assert gone == 2 and [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Conv"]
    x = np.random.default_rng(5).normal(size=(2, 3, 8, 8)).astype(np.float32)[:1]
    np.testing.assert_allclose(_run(folded, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "Mul", "Add", "Conv"]   # input unchanged


def test_a_padded_next_conv_takes_the_scale_but_not_the_shift():
    """conv(x + t) != conv(x) + t * sum(W) where the kernel overlaps the zero padding: the Add stays (as
    x + t / s), the Mul goes into the weights."""
    model = _lab_model(pad_second=True)
    folded, gone = onnx_fold.fold_forward(model)
    assert gone == 1 and [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Add", "Conv"]
    x = np.random.default_rng(6).normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)


def test_an_affine_read_by_something_other_than_a_conv_stays():
    model = _lab_model(pad_second=False)
    model.graph.output.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, None))  # also an output
    folded, gone = onnx_fold.fold_forward(model)
    assert gone == 0 and folded is model


def _hard_swish_se_model():
    """MobileNetV3's block tail as edgepack's INT8 copy spells it: conv -> x * (1/6) * clip(x + 3, 0, 6) (hard-swish)
    -> squeeze-excitation (GAP, conv, ReLU, conv, clip(z + 3, 0, 6) * (1/6)) -> x * se -> 1x1 conv; plus a branch
    where a scaled tensor meets itself (x6 * relu(x6): c squared), which must keep its Mul."""
    rng = np.random.default_rng(7)
    arrays = {"w": rng.normal(size=(4, 3, 3, 3)), "f1": rng.normal(size=(2, 4, 1, 1)),
              "f2": rng.normal(size=(4, 2, 1, 1)), "p": rng.normal(size=(5, 4, 1, 1)), "sixth": 1 / 6,
              "sixth2": 1 / 6, "three": 3.0, "zero": 0.0, "six": 6.0, "q": rng.normal(size=(3, 4, 1, 1)),
              "sixth3": 1 / 6}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]
    mk = helper.make_node
    nodes = [mk("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             mk("Add", ["c", "three"], ["c3"]), mk("Clip", ["c3", "zero", "six"], ["r6"]),
             mk("Mul", ["c", "sixth"], ["c6"]), mk("Mul", ["c6", "r6"], ["hs"]),
             mk("GlobalAveragePool", ["hs"], ["g"]), mk("Conv", ["g", "f1"], ["z1"]), mk("Relu", ["z1"], ["z1r"]),
             mk("Conv", ["z1r", "f2"], ["z2"]), mk("Add", ["z2", "three"], ["z3"]),
             mk("Clip", ["z3", "zero", "six"], ["z6"]), mk("Mul", ["z6", "sixth2"], ["se"]),
             mk("Mul", ["hs", "se"], ["s"]), mk("Conv", ["s", "p"], ["y"]),
             mk("Mul", ["c", "sixth3"], ["t"]), mk("Relu", ["t"], ["tr"]), mk("Mul", ["t", "tr"], ["sq"]),
             mk("Conv", ["sq", "q"], ["y2"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "y2")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_sixths_of_hard_swish_and_hard_sigmoid_go_through_squeeze_excitation_into_the_convolutions():
    model = _hard_swish_se_model()
    folded, gone = onnx_fold.fold_forward(model)
    muls = [(list(n.input)) for n in folded.graph.node if n.op_type == "Mul"]
    assert gone == 2                                   # both 1/6 of the block; the squared branch keeps its own
    assert ["c", "sixth3"] in muls and not any("sixth" in m or "sixth2" in m for m in muls)
    x = np.random.default_rng(8).normal(size=(1, 3, 8, 8)).astype(np.float32) * 3
    for a, b in zip(_run(folded, x), _run(model, x), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
