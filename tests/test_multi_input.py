"""Models with several inputs (issue 15: "Models with several outputs and several inputs are accepted"): an ONNX
file with an image and a vector input, fed from an .npz holding each input by name, built for both formats; the
bundle's run.py reads one such .npz; bad data files are exit 2 naming the input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _inputs(rng, n):
    return {"image": rng.standard_normal((n, 3, 32, 32)).astype(np.float32),
            "meta": rng.standard_normal((n, 8)).astype(np.float32)}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    import toy_models

    root = tmp_path_factory.mktemp("two")
    toy_models.export_image_and_vector(root / "two.onnx")
    rng = np.random.default_rng(0)
    np.savez(root / "calib.npz", **_inputs(rng, 48))
    np.savez(root / "val.npz", **_inputs(rng, 32))
    one = _inputs(rng, 1)
    np.savez(root / "one.npz", image=one["image"][0], meta=one["meta"])  # the batch dimension may be left out
    return root


def _run_py(bundle: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(bundle / "run.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_two_input_onnx_builds_and_its_runner_reads_an_npz(two, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "b"
    result = invoke("build", two / "two.onnx", "--target", "x86-64", "--calib", two / "calib.npz", "--val",
                    two / "val.npz", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["preprocess"] == {"kind": "tensors", "inputs": [
        {"name": "image", "shape": [1, 3, 32, 32], "dtype": "float32"},
        {"name": "meta", "shape": [1, 8], "dtype": "float32"}]}
    names = {b["name"] for b in man["validation"]["budgets"]}
    assert {"output_sqnr_db[logits]", "output_sqnr_db[aux]"} <= names, names
    with np.load(out / man["golden"]["file"]) as golden:
        assert {"image", "meta"} <= set(golden.files)
    assert invoke("verify", out).exit_code == 0
    # run.py: the shipped model's own outputs on one sample, as onnxruntime gives them
    res = _run_py(out, two / "one.npz", "--all-outputs", "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.splitlines()[-1])["outputs"]
    with np.load(two / "one.npz") as one:
        feed = {"image": one["image"][None], "meta": one["meta"]}
    want = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g["values"], np.float32), w, atol=1e-5)
    assert "numpy.savez('inputs.npz', image=" in (out / "README.md").read_text()
    assert "pillow" not in (out / "README.md").read_text()  # no photos are read


def test_runner_names_a_missing_input(two, tmp_path):
    out = tmp_path / "b"
    assert invoke("build", two / "two.onnx", "--target", "x86-64", "--calib", two / "calib.npz", "--out", out,
                  "-q").exit_code == 0
    np.savez(tmp_path / "half.npz", image=np.zeros((1, 3, 32, 32), np.float32))
    res = _run_py(out, tmp_path / "half.npz")
    assert res.returncode == 2 and "no array for input meta" in res.stderr, res.stderr


@pytest.mark.parametrize("case, said", [
    ("missing", "has no array for input meta"),
    ("shape", "input image: shape [4, 3, 30, 32], the model takes (N, 3, 32, 32)"),
    ("counts", "different numbers of samples (image 4, meta 5)"),
    ("extra", "arrays the model does not take: x"),
    ("ints", "input image: dtype int64, the model takes float32"),
    ("folder", "is a folder: a model that takes 2 inputs (image, meta) takes an .npz"),
    ("none", "the shipped calibration photos cannot feed it"),
    ("shape_flag", "--input-shape does not apply to a model that takes 2 inputs (image, meta)"),
])
def test_bad_several_input_data_is_exit_2_naming_the_input(two, tmp_path, case, said):
    rng = np.random.default_rng(1)
    good = _inputs(rng, 4)
    arrays = {"missing": {"image": good["image"]},
              "shape": {**good, "image": good["image"][:, :, :30]},
              "counts": {**good, "meta": rng.standard_normal((5, 8)).astype(np.float32)},
              "extra": {**good, "x": np.zeros(3)},
              "ints": {**good, "image": np.zeros((4, 3, 32, 32), np.int64)}}.get(case, good)
    calib = tmp_path / "c.npz"
    np.savez(calib, **arrays)
    (tmp_path / "photos").mkdir()
    args = {"folder": ["--calib", tmp_path / "photos"], "none": [],
            "shape_flag": ["--calib", calib, "--input-shape", "1,3,32,32"]}.get(case, ["--calib", calib])
    result = invoke("build", two / "two.onnx", "--target", "x86-64", *args, "--out", tmp_path / "b")
    assert result.exit_code == 2, result.output
    assert said in result.output
    if case not in ("counts", "shape_flag"):  # their hints: "one row per sample ...", "drop --input-shape"
        assert "numpy.savez(path, image=<float32 array (N, 3, 32, 32)>, meta=<float32 array (N, 8)>" in result.output
    assert not (tmp_path / "b").exists()


def test_torch_forward_with_two_inputs_builds_from_the_npz(two, tmp_path):
    """A PyTorch forward(image, meta): the inputs are its argument names, their shapes and dtypes the .npz's (a
    float64 array feeds the float32 model); it was refused ("missing 1 required positional argument")."""
    rng = np.random.default_rng(2)
    calib = tmp_path / "calib.npz"
    np.savez(calib, image=rng.standard_normal((24, 3, 32, 32)).astype(np.float32),
             meta=rng.standard_normal((24, 8)))   # float64, numpy's default
    out = tmp_path / "b"
    result = invoke("build", "toy_models:image_and_vector", "--target", "x86-64", "--calib", calib, "--val",
                    two / "val.npz", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["stages"]["export"]["inputs"] == ["image", "meta"]
    assert man["stages"]["export_parity"]["relative"] < 1e-4
    assert [i["shape"] for i in man["preprocess"]["inputs"]] == [[1, 3, 32, 32], [1, 8]]
    assert _run_py(out, two / "one.npz").returncode == 0


@pytest.mark.parametrize("args, said", [
    ([], "image_and_vector's forward takes 2 inputs (image, meta): the shipped calibration photos cannot feed it"),
    (["--calib", "{other}"], "has no array for forward argument meta (found: image)"),
])
def test_torch_forward_with_two_inputs_says_what_it_needs(two, tmp_path, args, said):
    np.savez(tmp_path / "other.npz", image=np.zeros((4, 3, 32, 32), np.float32))
    args = [a.format(other=tmp_path / "other.npz", calib=two / "calib.npz") for a in args]
    result = invoke("build", "toy_models:image_and_vector", "--target", "x86-64", *args, "--out", tmp_path / "b")
    assert result.exit_code == 2, result.output
    assert said in result.output


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_torch_forward_with_two_inputs_is_pruned(two, tmp_path, importance):
    """--prune on a forward(image, meta) traces, ranks (Taylor: gradients of both inputs' batches), reconstructs
    and counts MACs with both arguments; it was refused ("--prune does not apply to a model that takes 2
    inputs"). The output layers (two heads) keep their sizes."""
    out = tmp_path / "b"
    result = invoke("build", "toy_models:image_and_vector", "--target", "x86-64", "--calib", two / "calib.npz",
                    "--val", two / "val.npz", "--prune", "0.4", "--prune-importance", importance, "--out", out,
                    "--json")
    assert result.exit_code in (0, 1), result.output
    man = json.loads((out / "manifest.json").read_text())
    prune = man["stages"]["prune"]
    assert prune["macs_after"] < 0.8 * prune["macs_before"] and prune["mac_counts_agree"]
    changed = {layer["layer"]: layer for layer in prune["layers"]}
    assert {"image.0", "image.2", "vector.0"} <= set(changed)
    assert all(changed[h]["out_after"] == changed[h]["out_before"] for h in ("head", "aux") if h in changed)
    assert man["stages"]["export"]["inputs"] == ["image", "meta"]
    assert _run_py(out, two / "one.npz").returncode == 0


def test_a_two_input_prune_fine_tunes_on_float_inputs(two, tmp_path):
    """Fine-tuning after pruning fed every input of a several-input model as int64 (it assumed token ids), so a
    float image was truncated to integers, and it took a model with two outputs for one; each input now keeps its
    own dtype, and the first output is the one distilled (as Taylor importance ranks by it)."""
    import torch

    from edgepack.pruning.finetune import Inputs

    with np.load(two / "calib.npz") as f:
        arrays = {k: f[k] for k in ("image", "meta")}
    parts = Inputs(arrays, ["image", "meta"]).rows(slice(0, 2))
    assert [p.dtype for p in parts] == [torch.float32, torch.float32]
    np.testing.assert_array_equal(parts[0].numpy(), arrays["image"][:2])
    out = tmp_path / "b"
    result = invoke("build", "toy_models:image_and_vector", "--target", "x86-64", "--calib", two / "calib.npz",
                    "--prune", "0.4", "--finetune", two / "calib.npz", "--distill", "--finetune-epochs", "1",
                    "--out", out, "--json")
    assert result.exit_code in (0, 1), result.output
    ft = json.loads((out / "manifest.json").read_text())["stages"]["prune"]["finetune"]
    assert ft["train_samples"] > 0


def test_edgepack_prune_saves_a_two_input_program_that_builds(two, tmp_path):
    saved = tmp_path / "p.pt2"
    result = invoke("prune", "toy_models:image_and_vector", "--calib", two / "calib.npz", "--prune", "0.4",
                    "--save", saved)
    assert result.exit_code == 0, result.output
    result = invoke("build", saved, "--target", "x86-64", "--calib", two / "calib.npz", "--out", tmp_path / "b",
                    "--json")
    assert result.exit_code == 0, result.output
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["stages"]["export"]["inputs"] == ["image", "meta"]


def test_a_program_torch_cannot_rebuild_is_said(tmp_path):
    """torch.export.load succeeds but ExportedProgram.module() fails its lint when a submodule is named like a
    GraphModule attribute ('meta'): that was an internal error."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.meta = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.meta(x)

    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(Named().eval(), (torch.zeros(1, 4),)), str(path))
    result = invoke("build", path, "--target", "x86-64", "--out", tmp_path / "b")
    assert result.exit_code == 2, result.output
    assert "torch.export cannot rebuild the program" in result.output and "'meta'" in result.output


def test_an_onnx_file_with_two_inputs_is_not_pruned(two, tmp_path):
    result = invoke("build", two / "two.onnx", "--target", "x86-64", "--calib", two / "calib.npz", "--prune", "0.3",
                    "--out", tmp_path / "b")
    assert result.exit_code == 2 and "pruning needs a PyTorch model, got an ONNX file" in result.output


@pytest.mark.slow
def test_two_input_full_integer_tflite_matches_its_runner(two, tmp_path):
    """android-arm64: full-integer INT8 (int8 io) from the same .npz; LiteRT's inputs are channels-last and
    quantized, which the host runner and run.py both do from the named float arrays."""
    from edgepack.backends.tflite import TFLiteRunner

    out = tmp_path / "b"
    result = invoke("build", two / "two.onnx", "--target", "android-arm64", "--calib", two / "calib.npz", "--val",
                    two / "val.npz", "--out", out, "--no-emulate", "--json")
    assert result.exit_code == 0, result.output
    man = json.loads((out / "manifest.json").read_text())
    model = man["models"][0]
    assert model["format"] == "tflite" and {i["dtype"] for i in model["inputs"]} == {"int8"}
    sqnr = {b["name"]: b["value"] for b in man["validation"]["budgets"] if b["name"].startswith("output_sqnr")}
    assert min(sqnr.values()) > 15, sqnr   # a channels-first image or an unquantized feed gives noise (< 5 dB)
    res = _run_py(out, two / "one.npz", "--all-outputs", "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.splitlines()[-1])["outputs"]
    with np.load(two / "one.npz") as one:
        want = TFLiteRunner(out / "model.tflite").run_outputs({"image": one["image"][None], "meta": one["meta"]})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g["values"], np.float32), w, atol=1e-6)
    assert "val outputs = mapOf(0 to ByteBuffer.allocateDirect(5)" in (out / "README.md").read_text()


def _waves(rng, n):
    t = np.linspace(0, 1, 1600, dtype=np.float32)
    f = rng.uniform(50, 400, (n, 1, 1))
    return (np.sin(2 * np.pi * f * t) + 0.1 * rng.standard_normal((n, 1, 1600))).astype(np.float32)


@pytest.mark.parametrize("target", ["x86-64", pytest.param("android-arm64", marks=pytest.mark.slow)])
def test_one_waveform_input_builds_from_x_and_runs(tmp_path, target):
    """A single input that is not an NCHW image (a waveform, N,1,T) is read from an .npz, not decoded as photos:
    it was refused as an image model before. The TFLite input is N,T,1 (onnx2tf), which the runners feed."""
    import toy_models

    toy_models.export_waveform_classifier(tmp_path / "audio.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=_waves(rng, 48))   # the usual x= for one input
    np.savez(tmp_path / "val.npz", wave=_waves(rng, 32))  # or its name
    np.savez(tmp_path / "one.npz", wave=_waves(rng, 1)[0])
    out = tmp_path / "b"
    result = invoke("build", tmp_path / "audio.onnx", "--target", target, "--calib", tmp_path / "calib.npz",
                    "--val", tmp_path / "val.npz", "--out", out, "--no-emulate", "--json")
    assert result.exit_code == 0, result.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["preprocess"]["kind"] == "tensors" and man["stages"]["task"]["name"] == "classify"
    assert man["validation"]["agreement"] >= 0.9
    res = _run_py(out, tmp_path / "one.npz", "--json")
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout.splitlines()[-1])["top"]) == 4


@pytest.mark.parametrize("target", ["x86-64", pytest.param("android-arm64", marks=pytest.mark.slow)])
def test_a_pytorch_model_of_one_waveform_input_is_no_image_model(tmp_path, target):
    """The same waveform classifier as a PyTorch factory (one forward argument) was built as an image model: it
    needed --input-shape, its manifest recorded photos' preprocessing, run.py tried to decode the .npz as a photo,
    and the android-arm64 build failed with exit 70 feeding its 3-D input. The calibration .npz's rank now says
    it is not a photo, as an ONNX file's input does."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=_waves(rng, 48))
    np.savez(tmp_path / "one.npz", x=_waves(rng, 1)[0])
    out = tmp_path / "b"
    result = invoke("build", "toy_models:waveform_classifier", "--target", target, "--calib", tmp_path / "calib.npz",
                    "--out", out, "--no-emulate", "--json")
    assert result.exit_code == 0, result.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["preprocess"] == {"kind": "tensors", "inputs": [{"name": "x", "shape": [1, 1, 1600],
                                                                "dtype": "float32"}]}
    assert man["stages"]["task"]["name"] == "classify" and man["validation"]["agreement"] >= 0.9
    res = _run_py(out, tmp_path / "one.npz", "--json")
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout.splitlines()[-1])["top"]) == 4


def test_a_forward_argument_the_model_never_reads_is_named(tmp_path):
    """The exporter leaves an unused input out of the graph; feeding it failed inside onnxruntime with exit 70."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", image=rng.normal(size=(16, 3, 32, 32)).astype(np.float32),
             meta=rng.normal(size=(16, 8)).astype(np.float32))
    result = invoke("build", "toy_models:image_and_unused_vector", "--target", "x86-64", "--calib",
                    tmp_path / "calib.npz", "--out", tmp_path / "b")
    assert result.exit_code == 2, result.output
    assert "forward never uses its input(s) meta" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_an_input_named_y_and_a_uint8_factory_input_are_inputs(tmp_path):
    """forward(x, y) was refused: the .npz's y was read as labels ("y must be 24 integer labels"); a PyTorch
    factory of one uint8 pixel input was refused as an image model ("expected float32"), though the same model as
    an ONNX file built."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "xy.npz", x=rng.normal(size=(16, 3, 16, 16)).astype(np.float32),
             y=rng.normal(size=(16, 4)).astype(np.float32))
    result = invoke("build", "toy_models:image_and_y", "--target", "x86-64", "--calib", tmp_path / "xy.npz",
                    "--out", tmp_path / "a", "-q")
    assert result.exit_code in (0, 1), result.output
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert [i["name"] for i in man["preprocess"]["inputs"]] == ["x", "y"]
    np.savez(tmp_path / "u8.npz", x=rng.integers(0, 256, (16, 3, 16, 16)).astype(np.uint8))
    result = invoke("build", "toy_models:uint8_input", "--target", "x86-64", "--calib", tmp_path / "u8.npz",
                    "--out", tmp_path / "b", "-q")
    assert result.exit_code in (0, 1), result.output
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["preprocess"]["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "uint8"}]
    assert man["stages"]["export"]["opset"] == 17 and "opset_asked" not in man["stages"]["export"]


def test_the_manifest_records_the_opset_the_exporter_wrote(tmp_path):
    """The torch.export fallback keeps opset 18 when it cannot convert down to the profile's 17; the manifest said
    17 regardless."""
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).normal(size=(16, 3, 16, 16)).astype(np.float32))
    result = invoke("build", "toy_models:adaptive_pool_3x3", "--input-shape", "1,3,16,16", "--target", "x86-64",
                    "--calib", tmp_path / "c.npz", "--out", tmp_path / "b", "-q")
    assert result.exit_code in (0, 1), result.output
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    import onnx

    written = next(o.version for o in onnx.load(str(tmp_path / "b" / "model.onnx")).opset_import if o.domain == "")
    assert man["stages"]["export"]["opset"] == written
    if written != 17:
        assert man["stages"]["export"]["opset_asked"] == 17
        assert any(w.startswith(f"the ONNX exporter wrote opset {written}") for w in man["warnings"])


def test_an_output_that_is_a_copy_of_another_is_said(tmp_path):
    """`return y, y`: the TFLite file holds one tensor for both outputs and its manifest named both 'output1',
    without a word."""
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).normal(size=(16, 3, 16, 16)).astype(np.float32))
    result = invoke("build", "toy_models:same_twice", "--input-shape", "1,3,16,16", "--target", "x86-64",
                    "--calib", tmp_path / "c.npz", "--out", tmp_path / "b", "-q")
    assert result.exit_code in (0, 1), result.output
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert any(w.startswith("output 'output1' is a copy of output 'output0'") for w in man["warnings"]), \
        man["warnings"]


def test_outputs_sharing_one_tflite_tensor_are_named_as_declared(tmp_path):
    """`return y, y` on TFLite: onnx2tf keeps one tensor for both outputs, and the manifest listed both under its
    name ('output1', 'output1'). Each is named as the model declares it, with the tensor they share."""
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).normal(size=(16, 3, 16, 16)).astype(np.float32))
    result = invoke("build", "toy_models:same_twice", "--input-shape", "1,3,16,16", "--target", "android-arm64",
                    "--calib", tmp_path / "c.npz", "--out", tmp_path / "b", "-q")
    assert result.exit_code in (0, 1), result.output
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    first, second = man["outputs"]
    assert [first["name"], second["name"]] == ["output0", "output1"], man["outputs"]
    assert first["tensor"] == second["tensor"] == "output1"
    assert (first["shares_tensor_with"], second["shares_tensor_with"]) == (["output1"], ["output0"])
    readme = (tmp_path / "b" / "README.md").read_text()
    assert "output `output0` (shares the file's tensor `output1` with `output1`)" in readme, readme
    verified = invoke("verify", tmp_path / "b")
    assert verified.exit_code == 0, verified.output


def test_an_integer_output_is_labelled_by_its_shape_against_the_models(tmp_path):
    """A .tflite's outputs were labelled by rank alone: per-position class ids were "NWC" whatever their order. The
    label now says how the file's shape relates to the model's: the model's (N, 1, T) class ids are (N, T, 1) in
    the file, channels-last, "NWC", as the Conv1d map they come from."""
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).normal(size=(16, 3, 6)).astype(np.float32))
    result = invoke("build", "toy_models:position_classes", "--target", "android-arm64", "--calib", tmp_path / "c.npz",
                    "--out", tmp_path / "b", "-q")
    assert result.exit_code in (0, 1), result.output
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    ids, scores = man["outputs"]
    assert (ids["dtype"], ids["quantization"], ids["shape"], ids["layout"]) == ("int64", None, [1, 6, 1], "NWC"), ids
    assert (scores["shape"], scores["layout"]) == ([1, 6, 4], "NWC"), scores
    readme = (tmp_path / "b" / "README.md").read_text()
    assert f"output `{ids['name']}`: shape [1, 6, 1], int64, layout NWC" in readme, readme


def test_rows_the_converter_keeps_in_order_are_not_called_channels_last(tmp_path):
    """An SSD's (N, anchors, 4) boxes keep their order in the .tflite; the rank alone called them "NWC", as if the
    file held a (N, 4, anchors) tensor transposed. The map beside them is channels-last in the file."""
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32))
    result = invoke("build", "toy_models:boxes_and_map", "--input-shape", "1,3,8,8", "--target", "android-arm64",
                    "--calib", tmp_path / "c.npz", "--out", tmp_path / "b", "-q")
    assert result.exit_code in (0, 1), result.output
    rows, fmap = json.loads((tmp_path / "b" / "manifest.json").read_text())["outputs"]
    assert (rows["shape"], rows["layout"]) == ([1, 64, 4], None), rows
    assert (fmap["shape"], fmap["layout"]) == ([1, 8, 8, 4], "NHWC"), fmap


def test_layouts_from_source_settle_only_what_the_shapes_settle():
    from edgepack.backends.base import layouts_from_source

    def out(shape, dtype="float32"):
        return {"name": "o", "shape": shape, "dtype": dtype, "layout": {4: "NHWC", 3: "NWC", 2: "NC"}.get(len(shape)),
                "quantization": None}

    io = {"inputs": [], "outputs": [out([1, 8, 8, 4]), out([1, 4, 8, 8]), out([1, 64, 4]), out([1, 4, 4, 4]),
                                     out([1, 10]), out([1, 5, 1], "int64")]}
    source = [["batch", 4, 8, 8], [1, 4, 8, 8], [1, 64, 4], [1, 4, 4, 4], [1, 10], [1, "T", 1]]
    got = [o["layout"] for o in layouts_from_source(io, source)["outputs"]]
    # channels-last; left as the model has it (onnx2tf does that to some 4-D outputs); kept in order; square:
    # the rank's guess; 2-D; an integer output whose source shape is not fixed: no channel label
    assert got == ["NHWC", "NCHW", None, "NHWC", "NC", None]
    assert [o["layout"] for o in layouts_from_source(io, source[:2])["outputs"]][2] == "NWC"  # counts differ: rank


def test_uint8_pixel_input_is_fed_as_uint8(tmp_path):
    """A model taking uint8 pixels was refused ("image models take float32"); its .npz samples stay uint8 and
    run.py feeds them as such (it cast every non-integer-id input to float32: onnxruntime refused the feed)."""
    import toy_models

    toy_models.export_uint8_pixels(tmp_path / "u8.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", pixels=rng.integers(0, 256, (32, 3, 32, 32)).astype(np.uint8))
    np.savez(tmp_path / "one.npz", pixels=rng.integers(0, 256, (3, 32, 32)).astype(np.uint8))
    out = tmp_path / "b"
    result = invoke("build", tmp_path / "u8.onnx", "--target", "x86-64", "--calib", tmp_path / "calib.npz",
                    "--out", out, "-q")
    assert result.exit_code == 0, result.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["preprocess"]["inputs"] == [{"name": "pixels", "shape": [1, 3, 32, 32], "dtype": "uint8"}]
    res = _run_py(out, tmp_path / "one.npz", "--json")
    assert res.returncode == 0, res.stderr
    assert invoke("verify", out).exit_code == 0


def test_dynamic_length_is_pinned_to_the_calibration_arrays(tmp_path):
    """An ONNX waveform model exported with a dynamic length (N, 1, t) was refused ("symbolic dimensions"); the
    calibration .npz's arrays fix t, the build says so, and the manifest records it."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 8, 9, stride=4, padding=4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 1600),), str(tmp_path / "dyn.onnx"), input_names=["wave"],
                      output_names=["logits"], dynamic_axes={"wave": {0: "n", 2: "t"}}, opset_version=17, dynamo=False)
    np.savez(tmp_path / "w.npz", wave=_waves(np.random.default_rng(0), 24)[..., :1200])
    out = tmp_path / "b"
    result = invoke("build", tmp_path / "dyn.onnx", "--target", "x86-64", "--calib", tmp_path / "w.npz", "--out", out,
                    "--json")
    assert result.exit_code == 0, result.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["preprocess"]["inputs"][0]["shape"] == [1, 1, 1200]
    assert "wave:2" in man["stages"]["onnx_source"]["pinned_dims"]
    assert any("pinned to the sizes of the calibration data (wave [1, 1, 1200])" in w for w in man["warnings"])
    np.savez(tmp_path / "w.npz", other=np.zeros((4, 1, 1200), np.float32))
    refused = invoke("build", tmp_path / "dyn.onnx", "--target", "x86-64", "--calib", tmp_path / "w.npz", "--out",
                     tmp_path / "b2")
    assert refused.exit_code == 2 and "the calibration data does not fix them" in refused.output


@pytest.mark.slow
def test_logits_and_their_argmax_build_full_integer_without_allow_float_ops(tmp_path):
    """A model returning (logits, logits.argmax(1)) was refused for android-arm64: its ARG_MAX reads the float
    logits and was reported as an op "the converter could not quantize". Comparing floats into integers is exact
    and has nothing to quantize; the class ids ship as int64, equal to FP32's."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(16, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "b"
    result = invoke("build", "toy_models:logits_and_argmax", "--input-shape", "1,3,32,32", "--target", "android-arm64",
                    "--calib", tmp_path / "calib.npz", "--max-search-time", "0", "--no-emulate", "--latency-runs", "3",
                    "--out", out, "--json")
    assert result.exit_code in (0, 1), result.output
    man = json.loads((out / "manifest.json").read_text())
    assert [o["dtype"] for o in man["outputs"]] == ["int8", "int64"]
    assert man["validation"]["outputs_match"]["output1"] == 1.0
