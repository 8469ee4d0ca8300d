"""Ranking and closing the set of ops a TFLite variant keeps in float (edgepack.backends.tflite_mixed)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edgepack.backends import tflite_graph, tflite_mixed  # noqa: E402


def test_channel_nsr_sees_channels_an_outlier_starves():
    """One channel 256x the others: with one INT8 scale per tensor the small channels round to a step or two.
    The error over the scale is still under a step; the per-channel noise-to-signal ratio is near 1."""
    rng = np.random.default_rng(0)
    f = np.abs(rng.normal(size=(4, 8, 8, 16)))
    f[..., 0] *= 256
    scale = float(f.max()) / 255
    q = np.clip(np.round(f / scale) - 128, -128, 127).astype(np.int8)
    starved = tflite_mixed.channel_nsr(list(f), list(q), scale, -128)
    assert float(np.sqrt(np.mean(((q.astype(np.int64) + 128) * scale - f) ** 2)) / scale) < 0.5
    g = np.abs(rng.normal(size=(4, 8, 8, 16)))  # the same without the outlier
    scale_g = float(g.max()) / 255
    qg = np.clip(np.round(g / scale_g) - 128, -128, 127).astype(np.int8)
    healthy = tflite_mixed.channel_nsr(list(g), list(qg), scale_g, -128)
    assert starved > 0.05 and healthy < 1e-3 and starved > 100 * healthy


def test_channel_nsr_does_not_count_dead_channels():
    f = np.zeros((2, 4, 4, 3))
    f[..., 0] = 1.0
    q = np.zeros(f.shape, np.int8)
    q[..., 0] = 100
    assert tflite_mixed.channel_nsr(list(f), list(q), 0.01, 0) == pytest.approx(0.0, abs=1e-9)


def test_with_readers_follows_a_tensor_through_moves_to_the_ops_that_compute():
    graph = [("CONV_2D", ["x", "w1"], ["a"]), ("PAD", ["a", "p"], ["b"]), ("RESHAPE", ["b", "s"], ["c"]),
             ("CONV_2D", ["c", "w2"], ["d"]), ("ADD", ["a", "d"], ["e"]), ("MEAN", ["e"], ["f"])]
    assert tflite_graph.with_readers(graph, ["a"]) == ["a", "b", "e", "c", "d"]
    assert tflite_graph.with_readers(graph, ["e"]) == ["e", "f"]       # MEAN computes: the walk stops there
    assert tflite_graph.with_readers(graph, ["f"]) == ["f"]            # an output: nothing reads it


def test_weight_layouts_give_the_writers_weights_as_tflite_holds_them():
    """An activation is found in the .tflite by the weights of the Conv/Gemm that writes it (through a fused
    Clip), in TFLite's layout; one an Add writes has none, so the TFLite search does not try it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    dw = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(5, 4)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             helper.make_node("Conv", ["r", "dw"], ["d"], group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["r", "d"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (dw, "dw"), (fc, "fc"),
                                                         (np.float32(0), "lo"), (np.float32(6), "hi"))]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits))
    onnx.checker.check_model(model)
    (conv,) = tflite_graph.weight_layouts(model, "r")            # Conv -> Clip: the Conv's, (O, kh, kw, I)
    np.testing.assert_array_equal(conv, w.transpose(0, 2, 3, 1))
    (depthwise,) = tflite_graph.weight_layouts(model, "d")       # (1, kh, kw, C)
    np.testing.assert_array_equal(depthwise, dw.transpose(1, 2, 3, 0))
    (dense,) = tflite_graph.weight_layouts(model, "y")           # (N, K)
    np.testing.assert_array_equal(dense, fc)
    assert tflite_graph.weight_layouts(model, "s") == [] and tflite_graph.weight_layouts(model, "x") == []
