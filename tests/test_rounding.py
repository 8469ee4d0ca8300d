"""Tests for edgepack.backends.rounding: learned int8 weights (GPTQ) on the runtimes' own grid."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.backends import rounding
from edgepack.backends.tflite_prep import tflite_weight_quant
from edgepack.quantize import search


def _model() -> onnx.ModelProto:
    """input 1x3x12x12 -> Conv3x3 (8 out) -> Relu -> depthwise Conv3x3 -> GAP -> Flatten -> Gemm (4 out)."""
    rng = np.random.default_rng(0)
    arrays = {"w1": rng.normal(0, 0.5, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, 8),
              "w2": rng.normal(0, 0.5, (8, 1, 3, 3)), "w3": rng.normal(0, 0.5, (4, 8)), "b3": np.zeros(4)}
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _calib(n: int = 64) -> np.ndarray:
    """Smooth, correlated images (neighbouring pixels and channels move together), as photos are."""
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, (n, 1, 4, 4)).repeat(3, axis=2).repeat(3, axis=3)
    return (base + 0.3 * rng.normal(0, 1, (n, 3, 12, 12))).astype(np.float32)


def _weights(model: onnx.ModelProto) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _conv_outputs(model: onnx.ModelProto, weights: dict, xs: np.ndarray) -> np.ndarray:
    """conv1's output with ``weights`` (the original ones where not given)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    rounding.apply(m, weights)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("c1", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": xs[i:i + 1]})[0] for i in range(len(xs))])


def test_learned_weights_sit_on_the_runtimes_grid():
    model, calib = _model(), _calib()
    learned, summary = rounding.gptq_weights(model, calib)
    original = _weights(model)
    # conv1 (27 weights a row, 144 positions a sample) and the depthwise conv are sampled densely enough;
    # the Gemm sees one position a sample (64 < 50 x 8), so it is left to round-to-nearest
    assert sorted(learned) == ["w1", "w2"]
    assert summary["learned_layers"] == 2 and summary["layers"] == 3
    for name, w in learned.items():
        rows = original[name].reshape(len(w), -1)
        scale = np.abs(rows).max(1) / 127
        ints = w.reshape(len(w), -1) / scale[:, None]
        assert np.abs(ints - np.round(ints)).max() < 1e-3
        assert (np.abs(np.round(ints)).max(1) == 127).all()   # the scale a runtime recomputes is the same one
        np.testing.assert_allclose(tflite_weight_quant(w), w, rtol=0, atol=1e-7)  # the TFLite converter keeps them
    assert not np.array_equal(learned["w1"], tflite_weight_quant(original["w1"]))  # not round-to-nearest


def test_learned_rounding_lowers_the_layer_output_error_on_unseen_samples():
    model, calib = _model(), _calib()
    learned, summary = rounding.gptq_weights(model, calib)
    assert summary["output_error_vs_nearest"] < 0.9
    held_out = _calib(96)[64:]  # the same kind of images, not used to learn
    w1 = _weights(model)["w1"]
    exact = _conv_outputs(model, {}, held_out)
    err_learned = ((_conv_outputs(model, {"w1": learned["w1"]}, held_out) - exact) ** 2).sum()
    err_nearest = ((_conv_outputs(model, {"w1": tflite_weight_quant(w1)}, held_out) - exact) ** 2).sum()
    assert err_learned < 0.9 * err_nearest


def test_quantize_onnx_stores_the_learned_integers(tmp_path):
    from edgepack.backends.onnx_quantize import quantize_onnx

    model, calib = _model(), _calib()
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    learned, _ = rounding.gptq_weights(model, calib)
    record = quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calib, target_arch="aarch64",
                           weight_rounding="gptq")
    assert record["weight_rounding"]["learned_layers"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx"]  # the rounded copy is gone
    q = onnx.load(str(tmp_path / "int8.onnx"))
    inits = _weights(q)
    stored = {}
    for node in q.graph.node:
        if node.op_type == "DequantizeLinear" and inits.get(node.input[0], np.zeros(0)).dtype == np.int8:
            ints, scale = inits[node.input[0]], inits[node.input[1]]
            stored[ints.shape] = ints * scale.reshape(-1, *[1] * (ints.ndim - 1))
    np.testing.assert_allclose(stored[(8, 3, 3, 3)], learned["w1"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stored[(8, 1, 3, 3)], learned["w2"], rtol=1e-6, atol=1e-7)


def test_the_search_tries_learned_rounding_first_and_keeps_it():
    from pathlib import Path

    best = search.Trial("default recipe", {}, {"agreement": 0.9}, 1, None, 0.0, False, path=Path("x"))
    space = search.SearchSpace(method="minmax", per_channel=True, more_calib=lambda: None,
                               diagnose=lambda p: [], weight_rounding="nearest")
    steps = search.candidates(space, lambda: best)
    assert next(steps) == ("learned weight rounding", {"weight_rounding": "gptq"})
    best = search.Trial("learned weight rounding", {}, {"agreement": 0.93}, 1, None, 0.0, False, path=Path("y"),
                        raw_settings={"weight_rounding": "gptq"})
    name, settings = next(steps)
    assert name == "percentile calibration" and settings["weight_rounding"] == "gptq"
    gptq_space = search.SearchSpace(method="minmax", per_channel=True, more_calib=lambda: None,
                                    diagnose=lambda p: [], weight_rounding="gptq")
    assert next(search.candidates(gptq_space, lambda: best))[0] == "percentile calibration"


@pytest.mark.slow
def test_tflite_converter_keeps_the_learned_integers(tmp_path):
    """The full-integer .tflite holds exactly the learned integers (conv1: OHWI in TFLite)."""
    from edgepack.backends import tflite

    model, calib = _model(), _calib()
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    learned, _ = rounding.gptq_weights(model, calib)
    out = tflite.convert(tmp_path / "fp32.onnx", tmp_path / "work", calib, weight_rounding="gptq")
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(out))
    w1 = _weights(model)["w1"]
    expected = np.round(learned["w1"] / (np.abs(w1).reshape(8, -1).max(1) / 127)[:, None, None, None])
    found = [interp.get_tensor(d["index"]) for d in interp.get_tensor_details()
             if d["dtype"] == np.int8 and tuple(d["shape"]) == (8, 3, 3, 3)]
    assert any(np.array_equal(f, expected.transpose(0, 2, 3, 1).astype(np.int8)) for f in found)


def test_a_layer_kept_in_float_keeps_its_own_weights(tmp_path):
    from edgepack.backends.onnx_quantize import quantize_onnx

    model, calib = _model(), _calib()
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    record = quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calib, target_arch="aarch64",
                           weight_rounding="gptq", exclude_nodes=["conv1"])
    assert record["weight_rounding"]["learned_layers"] == 1
    conv1 = next(n for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node if n.name == "conv1")
    inits = _weights(onnx.load(str(tmp_path / "int8.onnx")))
    np.testing.assert_array_equal(inits[conv1.input[1]], _weights(model)["w1"])


@pytest.mark.slow
def test_tflite_int8_missing_its_budget_tries_learned_rounding(digits, tmp_path, monkeypatch):
    """When the full-integer .tflite misses its accuracy budget (forced here), it is converted again with learned
    weight rounding, which ships when it meets the budget, said in a warning and in the manifest."""
    import json

    from click.testing import CliRunner

    from edgepack.cli import main
    from edgepack.stages import quantize

    real, calls = quantize.meets_budget, []

    def first_misses(ctx, q):
        calls.append(q)
        return False if len(calls) == 1 else real(ctx, q)

    monkeypatch.setattr(quantize, "meets_budget", first_misses)
    out = tmp_path / "b"
    result = CliRunner().invoke(main, [
        "build", "toy_models:digits_cnn", "--weights", str(digits["weights"]), "--target", "android-arm64",
        "--input-shape", "1,1,16,16", "--calib", str(digits["calib"]), "--val", str(digits["val"]),
        "--out", str(out), "--latency-runs", "5", "--max-accuracy-drop", "5", "--no-emulate"])
    assert result.exit_code == 0, result.output
    man = json.loads((out / "manifest.json").read_text())
    rounding_record = man["stages"]["quantization_tflite"]["weight_rounding"]
    assert rounding_record["method"].startswith("gptq") and rounding_record["learned_layers"] >= 1
    assert [t["weight_rounding"] for t in rounding_record["trials"]] == ["nearest", "gptq"]
    assert any("shipping learned weight rounding" in w for w in man["warnings"])
    assert "TFLite INT8 weights: learned rounding (GPTQ)" in (out / "report.md").read_text()


def test_statistics_in_several_passes_give_the_same_weights(monkeypatch):
    """A model whose layer statistics exceed the memory bound is read in several passes, one layer each here."""
    model, calib = _model(), _calib()
    once, _ = rounding.gptq_weights(model, calib)
    monkeypatch.setattr(rounding, "MAX_STATISTICS_BYTES", 1)
    assert len(rounding._chunks(rounding._layers(model))) == 3
    split, _ = rounding.gptq_weights(model, calib)
    assert sorted(split) == sorted(once)
    for name in once:
        np.testing.assert_allclose(split[name], once[name], rtol=0, atol=1e-6)


def test_report_says_learned_rounding_was_tried_when_nearest_shipped():
    """The TFLite fallback's learned-rounding trial is said in report.md also when round-to-nearest stayed."""
    from edgepack.bundle.report import _rounding_lines

    trials = [{"weight_rounding": "nearest", "budget": {"name": "agreement", "value": 0.9167}},
              {"weight_rounding": "gptq", "budget": {"name": "agreement", "value": 0.7917}}]
    lines = _rounding_lines({"quantization_tflite": {"weight_rounding": {"method": "nearest", "trials": trials}}})
    assert "rounded to nearest" in lines[0] and "agreement 0.9167" in lines[0] and "(0.7917)" in lines[0]
    assert _rounding_lines({"quantization_tflite": {"weight_rounding": {"method": "nearest"}}}) == []
