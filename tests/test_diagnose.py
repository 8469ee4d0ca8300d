"""`edgepack diagnose` on an image model: per-layer INT8 error mapped to PyTorch module names, worst first,
from a model source and from a built bundle, as a table, JSON and a plot."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from edgepack.cli import main


def _rows(args: list[str]) -> list[dict]:
    result = CliRunner().invoke(main, ["diagnose", *args, "--json", "--top", "500"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.stdout)


def test_diagnose_ranks_layers_by_the_error_they_inject(tiny_data, tmp_path):
    rows = _rows(["toy_models:tiny_cnn", "--data", str(tiny_data["val"]), "--calib", str(tiny_data["calib"]),
                  "--input-shape", "1,3,32,32", "--target", "x86-64"])
    drops = [r["drop_db"] for r in rows]
    assert rows and None not in drops and drops == sorted(drops, reverse=True)
    convs = {r["name"] for r in rows if r["op"] == "Conv"}
    assert {"stem.0", "dw.0", "pw.0", "head.0"} <= convs  # torch module paths, not ONNX scope names


def test_diagnose_a_bundle_and_plot(tiny_data, tmp_path):
    out = tmp_path / "b"
    build = CliRunner().invoke(main, ["build", "toy_models:tiny_cnn", "--target", "x86-64", "--calib",
                                      str(tiny_data["calib"]), "--val", str(tiny_data["val"]), "--input-shape",
                                      "1,3,32,32", "--out", str(out), "--latency-runs", "3", "--quiet",
                                      "--max-accuracy-drop", "100", "--min-agreement", "0"])
    assert build.exit_code == 0, build.output + repr(build.exception)
    png = tmp_path / "layers.png"
    result = CliRunner().invoke(main, ["diagnose", str(out), "--data", str(tiny_data["val"]), "--plot", str(png)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "SQNR lost here dB" in result.output and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "only this rounded" not in result.output
    costed = CliRunner().invoke(main, ["diagnose", str(out), "--data", str(tiny_data["val"]), "--top", "3",
                                       "--output-cost"])
    assert costed.exit_code == 0 and "outputs SQNR, only this rounded dB" in costed.output, costed.output
    rows = json.loads(CliRunner().invoke(main, ["diagnose", str(out), "--data", str(tiny_data["val"]), "--top",
                                                "3", "--output-cost", "--json"]).stdout)
    assert len(rows) == 3 and all("output_sqnr_db" in r for r in rows)
    # the reference is the INT8 model minus activation rounding: the ReLU6 clamps the quantizer folded into the
    # Q ranges still apply (an Identity for each Q/DQ pair once dropped them: the reference then was the farther)
    from edgepack.backends import onnx as onnx_backend
    from edgepack.bundle.diagnose import float_activations
    from edgepack.tasks.base import sqnr_db

    reference = tmp_path / "reference.onnx"
    float_activations(out / "model.onnx", reference)
    x = np.load(tiny_data["val"])["x"]
    int8 = onnx_backend.Runner(out / "model.onnx", arithmetic="reference").run_samples(x)
    fp32 = onnx_backend.Runner(reference).run_samples(x)
    assert sqnr_db(fp32, int8) > 25
    # one rounding alone costs less at the output than all of them, and each costs something (not the 99 dB of
    # an unchanged output)
    assert all(sqnr_db(fp32, int8) - 0.5 < r["output_sqnr_db"] < 99 for r in rows), (sqnr_db(fp32, int8), rows)


def test_module_names_are_real_modules_of_nested_containers(tmp_path):
    """Every Conv of an exported torchvision MobileNetV3 (Sequential in Sequential) maps to a name
    named_modules() has: 'features.1.block.block.0.block.0.0' was printed, which --prune-ignore refused."""
    import onnx
    import torchvision

    from edgepack.backends import onnx as onnx_backend
    from edgepack.quantize.diagnose import module_name

    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10).eval()
    path = tmp_path / "m.onnx"
    onnx_backend.export(net, (1, 3, 64, 64), path, opset=17)
    convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    names = dict(net.named_modules())
    assert len(convs) > 20
    assert all(module_name(c) in names for c in convs), [module_name(c) for c in convs if module_name(c) not in names]
    assert module_name("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"


def test_bundle_layers_are_compared_after_their_clip(tiny_data, tmp_path):
    """The bundle reference writes each Q/DQ pair as a Clip. Comparing the tensor before that Clip with the INT8
    tensor after it charged every Conv whose ReLU the quantizer folded with the clipped-off negatives: about
    25 dB 'lost' at SSDLite's stem, against 6 in the build's own table."""
    from edgepack.bundle.diagnose import float_activations
    from edgepack.quantize.diagnose import layer_errors

    out = tmp_path / "b"
    build = CliRunner().invoke(main, ["build", "toy_models:tiny_cnn", "--target", "x86-64", "--calib",
                                      str(tiny_data["calib"]), "--val", str(tiny_data["val"]), "--input-shape",
                                      "1,3,32,32", "--out", str(out), "--latency-runs", "3", "--quiet",
                                      "--max-accuracy-drop", "100", "--min-agreement", "0", "--no-emulate"])
    assert build.exit_code == 0, build.output
    reference = tmp_path / "reference.onnx"
    float_activations(out / "model.onnx", reference)
    rows = layer_errors(reference, out / "model.onnx", np.load(tiny_data["val"])["x"])
    assert rows and min(r["sqnr_db"] for r in rows) > 20


def test_a_row_without_an_output_cost_prints_a_dash(tiny_data, monkeypatch):
    """output_costs skips an activation whose scale is computed, not stored: its row has no figure to format."""
    import edgepack.api

    rows = [{"name": "stem.0", "op": "Conv", "drop_db": 3.0, "sqnr_db": 30.0, "tensor": "a", "output_sqnr_db": 41.5},
            {"name": "head.0", "op": "Conv", "drop_db": 1.0, "sqnr_db": 25.0, "tensor": "b", "output_sqnr_db": None}]
    monkeypatch.setattr(edgepack.api, "diagnose", lambda *a, **k: rows)
    result = CliRunner().invoke(main, ["diagnose", "toy_models:tiny_cnn", "--data", str(tiny_data["val"]),
                                       "--input-shape", "1,3,32,32", "--output-cost"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    lines = result.output.splitlines()
    assert next(x for x in lines if x.startswith("stem.0")).split()[-1] == "41.5"
    assert next(x for x in lines if x.startswith("head.0")).split()[-1] == "-"


def test_activations_carrying_a_folded_hard_swish_multiply_are_compared_at_their_own_scale(tmp_path):
    """edgepack folds each hard-swish's x * 1/6 into a DequantizeLinear scale (onnx_quantize.fold_constant_muls):
    that DQ holds 1/6 of the tensor its QuantizeLinear rounds. The per-layer table compared it with the tensor
    itself (PP-OCR's classifier: 17 activations at SQNR 1.58 dB = -20 log10(5/6), a conv "losing" 39.5 dB), and a
    bundle's reference skipped the multiply, so its logits read -9.8 dB where the shipped INT8 file has 18."""
    import toy_models

    from edgepack.backends import onnx as onnx_backend
    from edgepack.backends.onnx_quantize import fold_factors, quantize_onnx
    from edgepack.bundle.diagnose import float_activations
    from edgepack.quantize.diagnose import layer_errors
    from edgepack.tasks.base import sqnr_db

    fp32, int8, reference = tmp_path / "fp32.onnx", tmp_path / "int8.onnx", tmp_path / "reference.onnx"
    onnx_backend.export(toy_models.hardswish_cnn(), (1, 3, 32, 32), fp32, opset=17)
    x = np.random.default_rng(0).normal(size=(32, 3, 32, 32)).astype(np.float32)
    quantize_onnx(fp32, int8, x, target_arch="x86_64")
    import onnx

    assert any(abs(c - 1 / 6) < 1e-6 for c in fold_factors(onnx.load(str(int8))).values())
    rows = layer_errors(fp32, int8, x[:8])
    assert rows and min(r["sqnr_db"] for r in rows) > 15, rows
    float_activations(int8, reference)
    ref, got = onnx_backend.Runner(reference).run_samples(x[:8]), onnx_backend.Runner(fp32).run_samples(x[:8])
    assert sqnr_db(got, ref) > 25
