"""The CLI through click's CliRunner: exit codes, messages, and one real (tiny) build end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack import __version__
from edgepack.cli import main

FAST = ["--latency-runs", "5", "--input-shape", "1,3,32,32"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def built(tiny_data, tmp_path_factory):
    """One tiny build, shared by the tests that read a bundle."""
    out = tmp_path_factory.mktemp("built") / "tiny"
    result = invoke("build", "toy_models:tiny_cnn", "--target", "x86-64", "--calib", tiny_data["calib"],
                    "--val", tiny_data["val"], "--out", out, "--json", *FAST)
    return out, result


def test_version_and_help():
    assert __version__ in invoke("--version").output
    text = invoke("--help").output
    assert "Examples:" in text and "Exit codes:" in text
    assert "--calib" in invoke("build", "--help").output


def test_targets_list_and_show():
    assert "raspberry-pi-4" in invoke("targets", "list").output
    shown = invoke("targets", "show", "raspberry-pi-4", "--json")
    assert json.loads(shown.stdout)["cpu"] == "Cortex-A72"
    table = invoke("targets", "show", "raspberry-pi-4").output  # the 13 references once padded every row to 8 kB
    assert max(len(line) for line in table.splitlines()) < 400 and "13 entries: " in table and "--json" in table


def test_build_writes_a_bundle_with_the_promised_manifest(built):
    out, result = built
    assert result.exit_code in (0, 1), result.output
    summary = json.loads(result.stdout)
    assert "exporting to ONNX ..." in result.stderr  # --json keeps the progress lines, on stderr only
    man = json.loads((out / "manifest.json").read_text())
    assert man["schema"] == "edgepack.bundle/1"
    assert man["model"]["file"] == "model.onnx" and man["model"]["format"] == "onnx"
    assert man["model"]["size_bytes"] == (out / "model.onnx").stat().st_size
    v = man["validation"]
    for key in ("accuracy_fp32", "accuracy_int8", "agreement", "latency_ms", "size_bytes", "budgets", "passed"):
        assert key in v
    assert set(v["latency_ms"]) >= {"fp32", "int8"} and v["latency_ms"]["int8"]["p50"] > 0
    assert v["latency_ms"]["kind"] == "measured-host"
    assert man["inputs"][0]["shape"] == [1, 3, 32, 32]
    assert man["created_from"]["calibration"]["samples"] == 32
    assert {"torch", "onnxruntime", "onnx"} <= set(man["tools"])
    assert summary["passed"] == man["passed"] == (result.exit_code == 0)
    assert (out.parent / "tiny.zip").is_file() and (out / "report.md").is_file() and (out / "run.py").is_file()


def test_budget_miss_exits_1_and_marks_bundle_failed(tiny_data, tmp_path):
    out = tmp_path / "b"
    result = invoke("build", "toy_models:tiny_cnn", "--target", "x86-64", "--calib", tiny_data["calib"],
                    "--val", tiny_data["val"], "--out", out, "--max-size-mb", "0.0001", *FAST)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "size_mb" in result.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["passed"] is False
    size = [b for b in man["validation"]["budgets"] if b["name"] == "size_mb"][0]
    assert size["passed"] is False
    assert size["value"] == man["validation"]["size_bytes"]["int8"] / 1e6  # judged to the byte, not the kB


def test_an_explicit_min_agreement_is_judged_beside_the_labelled_accuracy_drop(tiny_data, tmp_path):
    """With labels the classifier's budget is its accuracy drop; a --min-agreement the user asked for was dropped
    without a word. It gets its own row (an agreement of 1.01 cannot be met: exit 1)."""
    out = tmp_path / "b"
    result = invoke("build", "toy_models:tiny_cnn", "--target", "x86-64", "--calib", tiny_data["calib"],
                    "--val", tiny_data["val"], "--out", out, "--min-agreement", "1.0", "--max-accuracy-drop", "100",
                    "--max-search-time", "0", *FAST)
    man = json.loads((out / "manifest.json").read_text())
    rows = {b["name"]: b for b in man["validation"]["budgets"]}
    assert {"accuracy_drop_points", "agreement"} <= set(rows), rows
    assert rows["agreement"]["limit"] == 1.0
    assert result.exit_code == (0 if rows["agreement"]["passed"] else 1)


@pytest.mark.parametrize("copy", [False, True])
def test_validating_on_the_calibration_data_is_said_and_recorded(tiny_data, tmp_path, copy):
    """--val naming the calibration data (the same file, or a copy of it) is judged like no --val: a warning, and
    the manifest says the figures come from calibration samples."""
    import shutil

    val = tiny_data["calib"]
    if copy:
        val = tmp_path / "copy.npz"
        shutil.copyfile(tiny_data["calib"], val)
    out = tmp_path / "b"
    result = invoke("build", "toy_models:tiny_cnn", "--target", "x86-64", "--calib", tiny_data["calib"],
                    "--val", val, "--out", out, "--max-accuracy-drop", "100", "--min-agreement", "0", *FAST)
    assert result.exit_code == 0, result.output
    assert "is the calibration data" in result.output
    assert json.loads((out / "manifest.json").read_text())["validation"]["on_calibration_data"] is True


def test_config_file_gives_the_same_settings(tiny_data, tmp_path):
    cfg = tmp_path / "ci.toml"
    cfg.write_text(f'model = "toy_models:tiny_cnn"\ntarget = "x86-64"\ncalib = "{tiny_data["calib"]}"\n'
                   f'input_shape = [1, 3, 32, 32]\nmax_size_mb = 99.0\nseed = 3\n')
    result = invoke("build", "--config", cfg, "--dry-run")
    config = json.loads(result.stdout)["config"]
    assert config["max_size_mb"] == 99.0 and config["seed"] == 3 and config["input_shape"] == [1, 3, 32, 32]
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "x"\ncalib_sample = 3\n')
    result = invoke("build", "--config", bad, "--dry-run")
    assert result.exit_code == 2 and "did you mean 'calib_samples'" in result.output


@pytest.mark.parametrize("case, args, message", [
    ("factory module", ["nowhere_pkg.models:create"], "cannot import factory 'nowhere_pkg.models:create'"),
    ("submodule", ["toy_models.sub:f"], "cannot import factory"),
    ("model file", ["missing.onnx"], "model file not found: missing.onnx"),
    ("weights", ["toy_models:tiny_cnn", "--weights", "missing.pt"], "weights file (--weights) not found"),
    ("calib", ["toy_models:tiny_cnn", "--calib", "missing_calib"], "calibration data (--calib) not found"),
    ("val", ["toy_models:tiny_cnn", "--val", "missing_val.npz"], "validation data (--val) not found"),
    ("labels dir", ["toy_models:tiny_cnn", "--labels-dir", "missing_masks"], "labels folder (--labels-dir) not found"),
    ("tokenizer", ["toy_models:tiny_cnn", "--tokenizer", "missing.json"], "tokenizer (--tokenizer) not found"),
    ("target", ["toy_models:tiny_cnn", "--target", "no-such-board"], "unknown target"),
])
def test_dry_run_checks_what_the_config_names(case, args, message, tmp_path, monkeypatch):
    """--dry-run exited 0 with a missing model module, weights, --calib and --val: useless as a CI check."""
    monkeypatch.chdir(tmp_path)
    result = invoke("build", *args, "--dry-run")
    assert result.exit_code == 2 and message in result.output and "Hint:" in result.output, result.output


def test_dry_run_finds_a_factory_without_importing_it(tiny_data, tmp_path, monkeypatch):
    """The factory's package is found from the current folder, as the build imports it, and nothing of it runs."""
    import sys

    pkg = tmp_path / "dry_pkg"
    (pkg / "nets").mkdir(parents=True)
    marker = tmp_path / "imported"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (pkg / "nets" / "__init__.py").write_text("")
    (pkg / "nets" / "small.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    result = invoke("build", "dry_pkg.nets.small:create", "--calib", tiny_data["calib"], "--val", tiny_data["val"],
                    "--dry-run")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages"] and not marker.exists()
    assert invoke("build", "dry_pkg.nets.big:create", "--dry-run").exit_code == 2


@pytest.mark.parametrize("written", ['"1,3,32,32"', '"[1, 3, 32, 32]"', "[1, 3, 32, 32]"])
def test_config_file_takes_lists_as_the_command_line_writes_them(written, tmp_path):
    """input_shape = "1,3,32,32" in a config gave 'must be tuple or NoneType, got str'."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'model = "toy_models:tiny_cnn"\ninput_shape = {written}\nmean = "0.5, 0.5, 0.5"\n'
                   'std = "[0.25, 0.25, 0.25]"\n')
    result = invoke("build", "--config", cfg, "--dry-run")
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert config["input_shape"] == [1, 3, 32, 32] and config["preprocess"]["mean"] == [0.5] * 3
    assert config["preprocess"]["std"] == [0.25] * 3


def test_config_errors_are_worded_for_people_and_point_to_build_help(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "toy_models:tiny_cnn"\ninput_shape = "1,3,a"\nper_channel = 1\nseed = "3"\n')
    result = invoke("build", "--config", cfg, "--dry-run")
    assert result.exit_code == 2, result.output
    assert "input_shape must be a list of integers like [1, 3, 224, 224], got the string '1,3,a'" in result.output
    assert "per_channel must be true or false, got 1" in result.output
    assert "seed must be an integer, got the string '3'" in result.output
    assert "NoneType" not in result.output and "tuple" not in result.output
    assert "edgepack build --help" in result.output and "targets show" not in result.output
    # paths in a config file are relative to the current folder; one that exists beside the file is named
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "calib.npz").write_bytes(b"")
    (tmp_path / "conf" / "c.toml").write_text('model = "toy_models:tiny_cnn"\ncalib = "calib.npz"\n')
    monkeypatch.chdir(tmp_path)
    result = invoke("build", "--config", "conf/c.toml", "--dry-run")
    assert result.exit_code == 2 and "relative to the current folder" in result.output, result.output
    assert "conf/calib.npz" in result.output
    assert invoke("build", "--config", "conf/c.toml", "--calib", "conf/calib.npz", "--dry-run").exit_code == 0


def test_inspect_and_verify(built):
    out, _ = built
    shown = invoke("inspect", out)
    assert shown.exit_code == 0 and "model.onnx" in shown.output and "budget" in shown.output
    assert invoke("verify", out).exit_code == 0
    assert invoke("verify", out.parent / "tiny.zip").exit_code == 0


BUNDLE_FILES = ["model.onnx", "manifest.json", "report.md", "report.html", "run.py", "golden.npz"]


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_verify_detects_a_flipped_byte_in_any_file(built, tmp_path, name):
    import shutil

    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    result = invoke("verify", copy)
    assert result.exit_code in (2, 5), result.output
    assert "Traceback" not in result.output and result.output.startswith("Error: ")


def test_verify_detects_an_edited_manifest_that_is_still_valid_json(built, tmp_path):
    """Changing a measured number or the verdict in manifest.json (still valid JSON, still the schema) must fail
    verification: the manifest carries a digest of its own canonical content."""
    import json
    import shutil

    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    man = json.loads((copy / "manifest.json").read_text())
    man["passed"] = not man["passed"]
    (copy / "manifest.json").write_text(json.dumps(man, indent=2))
    result = invoke("verify", copy)
    assert result.exit_code == 5 and "self-digest" in result.output
    del man["manifest_sha256"]
    (copy / "manifest.json").write_text(json.dumps(man, indent=2))
    assert invoke("verify", copy).exit_code == 5


def test_a_signed_bundle_verifies_only_for_its_signer_and_unedited(built, tmp_path):
    """The self-digest cannot stop someone who recomputes it after an edit; a signature can. Real ssh-keygen
    keys: the builder's signature passes, an edit with a recomputed digest fails, another key is not trusted."""
    import shutil
    import subprocess

    from edgepack.util import manifest_json

    out, _ = built
    keys = {}
    for who in ("builder", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", str(tmp_path / who)],
                       check=True)
        keys[who] = (tmp_path / f"{who}.pub").read_text().split()
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"ci@example.org {keys['builder'][0]} {keys['builder'][1]}\n")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.copyfile(out.parent / "tiny.zip", tmp_path / "copy.zip")
    unsigned = invoke("verify", copy, "--allowed-signers", allowed)
    assert unsigned.exit_code == 5 and "not signed" in unsigned.output
    assert invoke("sign", copy, "--key", tmp_path / "builder").exit_code == 0
    for bundle in (copy, tmp_path / "copy.zip"):  # the zip was rewritten with the signature in it
        ok = invoke("verify", bundle, "--allowed-signers", allowed)
        assert ok.exit_code == 0 and "signed by ci@example.org" in ok.output, ok.output
    assert invoke("verify", copy).exit_code == 0  # without --allowed-signers the .sig is listed, not refused
    man = json.loads((copy / "manifest.json").read_text())
    man["passed"] = not man["passed"]
    (copy / "manifest.json").write_text(manifest_json(man))
    assert invoke("verify", copy).exit_code == 0  # the digest alone cannot tell
    edited = invoke("verify", copy, "--allowed-signers", allowed)
    assert edited.exit_code == 5 and "does not verify" in edited.output
    man["passed"] = not man["passed"]
    (copy / "manifest.json").write_text(manifest_json(man))
    assert invoke("sign", copy, "--key", tmp_path / "stranger").exit_code == 0
    stranger = invoke("verify", copy, "--allowed-signers", allowed)
    assert stranger.exit_code == 5 and "not made by any key" in stranger.output


def test_verify_refuses_zip_slip_and_links(built, tmp_path):
    import zipfile

    out, _ = built
    for entry, attr in (("../evil.txt", 0o644 << 16), ("bundle/link", (0o120777 << 16))):
        bad = tmp_path / f"bad{len(entry)}.zip"
        with zipfile.ZipFile(bad, "w") as zf:
            for f in sorted(out.iterdir()):
                zf.write(f, f"bundle/{f.name}")
            info = zipfile.ZipInfo(entry)
            info.external_attr = attr
            zf.writestr(info, "/etc/passwd")
        result = invoke("verify", bad)
        assert result.exit_code == 5 and "refused" in result.output, result.output
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("case", ["missing image", "not an image", "missing feed", "wrong feed shape",
                                  "all outputs without an input"])
def test_bundle_runner_says_what_is_wrong_without_a_traceback(built, tmp_path, case):
    """run.py in a bundle: a user's mistake is one line and exit 2 (--debug shows the traceback)."""
    import subprocess
    import sys

    import numpy as np

    out, _ = built
    feed = tmp_path / "feed.npz"
    np.savez(feed, input=np.zeros((2, 3, 8, 8), np.float32))
    argv = {"missing image": ["nonexistent.jpg"], "not an image": [str(out / "manifest.json")],
            "missing feed": ["--batch", str(tmp_path / "none.npz"), "--out", str(tmp_path / "o.npz")],
            "wrong feed shape": ["--batch", str(feed), "--out", str(tmp_path / "o.npz")],
            "all outputs without an input": ["--all-outputs", "--out", str(tmp_path / "o.npz")]}[case]
    proc = subprocess.run([sys.executable, str(out / "run.py"), *argv], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr, proc.stderr
    assert not (tmp_path / "o.npz").exists()


def _two_output_bundle(built, path: Path) -> Path:
    """The built bundle with a generic two-output model (an embedding and its square) in place of its classifier:
    run.py reads only the manifest's models, preprocessing and task."""
    import shutil

    import onnx
    from onnx import TensorProto, helper

    shutil.copytree(built[0], path)
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["embedding"]),
             helper.make_node("Mul", ["embedding", "embedding"], ["square"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 3]),
                               helper.make_tensor_value_info("square", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path / "model.onnx")
    man = json.loads((path / "manifest.json").read_text())
    man["models"][0]["outputs"] = [{**man["models"][0]["outputs"][0], "name": n, "shape": [1, 3]}
                                   for n in ("embedding", "square")]
    man["stages"]["task"] = {"name": "generic"}
    (path / "manifest.json").write_text(json.dumps(man))
    return path


def test_bundle_runner_gives_every_output_of_a_photo(built, tmp_path):
    """A generic (embedding) or multi-output bundle's run.py printed only each output's shape/min/max/mean for a
    photo (--all-outputs took --batch only): --all-outputs now gives every output's values, --save an .npz."""
    import subprocess
    import sys

    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    bundle = _two_output_bundle(built, tmp_path / "two")
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photo)

    def run(*argv):
        proc = subprocess.run([sys.executable, str(bundle / "run.py"), str(photo), *argv], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    sys.path.insert(0, str(bundle))
    try:
        import run as runner  # the bundle's own preprocessing, for the expected values
    finally:
        sys.path.remove(str(bundle))
        sys.modules.pop("run", None)
    x = runner.preprocess(photo, json.loads((bundle / "manifest.json").read_text())["preprocess"], [1, 3, 32, 32])
    expected = ort.InferenceSession(str(bundle / "model.onnx")).run(None, {"input": x})
    res = json.loads(run("--all-outputs", "--json"))
    assert [o["name"] for o in res["outputs"]] == ["embedding", "square"]
    for got, want in zip(res["outputs"], expected, strict=True):
        np.testing.assert_allclose(np.asarray(got["values"]), want, rtol=1e-5, atol=1e-6)
    text = run("--all-outputs")
    assert "output 1 (square): shape [1, 3]" in text and f"{expected[0][0, 0]:.4f}"[:6] in text, text
    run("--all-outputs", "--save", tmp_path / "all.npz")
    with np.load(tmp_path / "all.npz") as saved:
        assert sorted(saved.files) == ["output0", "output1"]
        np.testing.assert_allclose(saved["output1"], expected[1], rtol=1e-5, atol=1e-6)
    run("--out", tmp_path / "first.npz")  # without --all-outputs: the first output (as --batch --out saves)
    with np.load(tmp_path / "first.npz") as saved:
        assert saved.files == ["output0"] and saved["output0"].shape == (1, 3)
    # a classifier's bundle: the top classes as before, and its logits' values with --all-outputs
    proc = subprocess.run([sys.executable, str(built[0] / "run.py"), str(photo), "--all-outputs", "--json"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    res = json.loads(proc.stdout)
    assert res["top"] and np.asarray(res["outputs"][0]["values"]).shape == (1, 10), proc.stderr
    # each top class with its probability (the logits' softmax), not only the raw score a text model never showed
    logits = np.asarray(res["outputs"][0]["values"], np.float64)[0]
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for r in res["top"]:
        assert r["probability"] == pytest.approx(want[r["class"]], abs=1e-5), res["top"]
    assert "--all-outputs" in (built[0] / "README.md").read_text()  # the bundle README says how


def test_existing_output_is_refused_without_force(built, tiny_data):
    out, _ = built
    result = invoke("build", "toy_models:tiny_cnn", "--calib", tiny_data["calib"], "--out", out, *FAST)
    assert result.exit_code == 3 and "already exists" in result.output and "--force" in result.output


@pytest.mark.parametrize("args, code, kind", [
    (["build", "missing.onnx", "--target", "x86-64", "--json"], 2, "InputError"),
    (["build", "missing.onnx", "--no-such-flag", "--json"], 2, "UsageError"),
    (["targets", "show", "no-such-device", "--json"], 2, "InputError"),
])
def test_json_commands_say_why_they_failed_on_stdout(args, code, kind):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == kind and error["exit_code"] == code and error["message"]


def test_profile_with_both_formats_builds_and_validates_both(tiny_data, tmp_path):
    """One build, two models (ONNX and full-integer TFLite), each with its own budget table."""
    text = (Path(__file__).resolve().parents[1] / "targets" / "android-arm64.toml").read_text()
    profile = tmp_path / "both.toml"
    profile.write_text(text.replace('formats = ["tflite"]', 'formats = ["onnx", "tflite"]'))
    out = tmp_path / "both"
    result = invoke("build", "toy_models:tiny_cnn", "--target", profile, "--calib", tiny_data["calib"],
                    "--val", tiny_data["val"], "--out", out, "--json", *FAST)
    assert result.exit_code in (0, 1), result.output
    man = json.loads((out / "manifest.json").read_text())
    assert [m["format"] for m in man["models"]] == ["onnx", "tflite"]
    lite = man["models"][1]
    assert lite["file"] == "model.tflite" and (out / "model.tflite").is_file()
    q = lite["inputs"][0]["quantization"]
    assert lite["inputs"][0]["dtype"] == "int8" and lite["inputs"][0]["layout"] == "NHWC"
    assert q["scale"] > 0 and -128 <= q["zero_point"] <= 127
    assert lite["validation"]["budgets"] and lite["validation"]["agreement"] is not None
    assert man["stages"]["quantization_tflite"]["float_ops"] == []
    assert invoke("verify", out).exit_code == 0
    readme = (out / "README.md").read_text()
    assert "```kotlin" in readme and f"{q['scale']:.8g}" in readme and "NHWC" in readme


def test_build_with_pruning_reports_unpruned_and_pruned(tiny_data, tmp_path):
    out = tmp_path / "pruned"
    result = invoke("build", "toy_models:tiny_cnn", "--target", "x86-64", "--calib", tiny_data["calib"],
                    "--val", tiny_data["val"], "--out", out, "--prune", "0.5", "--prune-round-to", "4", *FAST)
    assert result.exit_code in (0, 1), result.output
    assert "unpruned FP32: params / MACs" in result.output
    man = json.loads((out / "manifest.json").read_text())
    u = man["validation"]["unpruned_fp32"]
    assert u["pruned_params"] < u["params"] and u["pruned_macs"] < u["macs"]
    assert man["stages"]["prune"]["mac_counts_agree"] is True


def test_one_validation_sample_is_said_to_prove_nothing(tiny_data, tmp_path):
    """--val-samples 1 gave a plain PASS with no interval and no word, while 3 samples warned."""
    out = tmp_path / "b"
    result = invoke("build", "toy_models:tiny_cnn", "--target", "x86-64", "--calib", tiny_data["calib"],
                    "--val", tiny_data["val"], "--val-samples", "1", "--out", out, "--json", *FAST)
    assert result.exit_code in (0, 1), result.output
    assert any("judged on 1 validation sample" in w for w in json.loads(result.stdout)["warnings"])


def test_pruning_loss_is_judged_against_the_unpruned_model(digits, tmp_path):
    """The quality budget compares INT8 with the pruned FP32 model, so a prune that lost 24 points passed without
    a word. --prune-max-drop judges unpruned FP32 -> shipped INT8; without it a large pruning loss is warned."""
    base = ["build", "toy_models:digits_cnn", "--weights", digits["weights"], "--input-shape", "1,1,16,16",
            "--calib", digits["calib"], "--val", digits["val"], "--prune", "0.75", "--prune-round-to", "2",
            "--no-prune-reconstruct", "--max-search-time", "0", "--json", *FAST[:2]]
    judged = invoke(*base, "--out", tmp_path / "a", "--target", "x86-64", "--prune-max-drop", "0.5")
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    v = man["validation"]
    row = next(b for b in v["budgets"] if b["name"] == "accuracy_drop_vs_unpruned_points")
    assert row["value"] == pytest.approx(v["unpruned_fp32"]["accuracy"] - v["accuracy_int8"], abs=0.01)
    assert row["limit"] == 0.5 and judged.exit_code == (0 if man["passed"] else 1)
    lost = v["unpruned_fp32"]["accuracy"] - v["accuracy_fp32"]
    assert lost > 1.0, "a 75 % prune of the digits CNN without reconstruction should cost points"
    plain = invoke(*base, "--out", tmp_path / "b", "--target", "x86-64")
    warnings = json.loads(plain.stdout)["warnings"]
    assert sum(w.startswith("pruning cost") for w in warnings) == 1, warnings


def test_prune_help_lists_only_what_pruning_uses():
    """prune took (and ignored) every build option: budgets, --out, --emulate..."""
    text = invoke("prune", "--help").output
    assert "--prune " in text and "--calib " in text and "--finetune " in text and "0 saved" in text
    for build_only in ("--max-latency-ms", "--out ", "--emulate", "--text-tflite-int8", "--weight-rounding",
                       "--prune-max-drop"):
        assert build_only not in text, build_only
    assert invoke("prune", "toy_models:tiny_cnn", "--max-latency-ms", "1", "--save", "x.pt2").exit_code == 2


def test_diagnose_offers_only_what_it_uses_and_refuses_model_options_for_a_bundle(built, tiny_data, tmp_path):
    """diagnose listed every build option (--out, --force, --prune, budgets...) and ignored them all; on a bundle
    even --mean or --input-shape, which the bundle's manifest fixes, were silently ignored (exit 0)."""
    text = invoke("diagnose", "--help").output
    assert "--data " in text and "--input-shape " in text and "--weights " in text and "--mean " in text
    for unused in ("--out ", "--force", "--prune", "--finetune", "--max-latency-ms", "--emulate", "--val ",
                   "--max-search-time", "--labels-dir"):
        assert unused not in text, unused
    out, _ = built
    result = invoke("diagnose", out, "--data", tiny_data["val"], "--out", tmp_path / "x", "--prune", "0.5")
    assert result.exit_code == 2 and "No such option" in result.output
    result = invoke("diagnose", out, "--data", tiny_data["val"], "--mean", "0.1,0.1,0.1", "--no-per-channel",
                    "--input-shape", "1,3,32,32")
    assert result.exit_code == 2, result.output
    assert "--mean" in result.output and "--input-shape" in result.output and "--no-per-channel" in result.output
    assert "manifest" in result.output and "Hint:" in result.output
    # a model source still takes them, and its --config file is read (it was dropped unread)
    config = tmp_path / "diag.toml"
    config.write_text(f'weights = "{tmp_path / "missing.pt"}"\n')
    result = invoke("diagnose", "toy_models:tiny_cnn", "--data", tiny_data["val"], "--config", config)
    assert result.exit_code == 2 and "missing.pt" in result.output, result.output


def test_prune_command_saves_a_pt2_program(tiny_data, tmp_path):
    import torch

    result = invoke("prune", "toy_models:tiny_cnn", "--calib", tiny_data["calib"], "--input-shape", "1,3,32,32",
                    "--prune", "0.5", "--prune-round-to", "4", "--save", tmp_path / "p.pt2")
    assert result.exit_code == 0, result.output
    module = torch.export.load(str(tmp_path / "p.pt2")).module()
    assert module(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    # and the README's next step: build from the saved program (it once stopped: exit 70, "Calling eval() is not
    # supported yet"), at the shape the program was captured at (no --input-shape: not the profile's 224 px)
    out = tmp_path / "b"
    built = invoke("build", tmp_path / "p.pt2", "--target", "x86-64", "--calib", tiny_data["calib"], "--val",
                   tiny_data["val"], "--out", out, "--max-accuracy-drop", "100", "--min-agreement", "0",
                   "--latency-runs", "5")
    assert built.exit_code == 0, built.output
    assert json.loads((out / "manifest.json").read_text())["stages"]["export"]["input_shape"] == [1, 3, 32, 32]
    quiet = invoke("prune", "toy_models:tiny_cnn", "--calib", tiny_data["calib"], "--input-shape", "1,3,32,32",
                   "--prune", "0.5", "--save", tmp_path / "q.pt2", "-q")
    assert quiet.exit_code == 0 and quiet.output.strip().splitlines() == [f"saved: {tmp_path / 'q.pt2'}"]
    # a name that is not .pt2 is refused before any work (torch.export writes a .pt2 zip whatever the name)
    named = invoke("prune", "toy_models:tiny_cnn", "--calib", tiny_data["calib"], "--input-shape", "1,3,32,32",
                   "--prune", "0.5", "--save", tmp_path / "p.onnx")
    assert named.exit_code == 2 and ".pt2" in named.output and not (tmp_path / "p.onnx").exists()


def test_bundle_readme_kotlin_states_the_preprocessing_numbers():
    """The TFLite README's snippet said 'resize None, centre crop None' and no mean or std for the defaults."""
    from edgepack.bundle.readme import _kotlin

    q = {"scale": 0.0157, "zero_point": -1}
    man = {"runtime": {"threads": 2},
           "preprocess": {"resize": None, "crop": None, "scale": 1.0, "mean": [127.0, 127.0, 127.0],
                          "std": [128.0, 128.0, 128.0], "channel_order": "RGB"}}
    model = {"inputs": [{"shape": [1, 224, 224, 3], "dtype": "int8", "layout": "NHWC", "quantization": q}],
             "outputs": [{"shape": [1, 1000], "dtype": "int8", "quantization": q}]}
    text = _kotlin(man, model)
    assert "None" not in text
    assert "resized to 256 px" in text and "centre crop 224 x 224" in text
    assert "mean [127.0, 127.0, 127.0]" in text and "std [128.0, 128.0, 128.0]" in text


def _readme_manifest(formats=("onnx",), task="detect", kind=None, tools=None) -> dict:
    from edgepack.bundle.readme import render

    q = {"scale": 0.02, "zero_point": 0}
    inputs = [{"name": "input", "shape": [1, 3, 320, 320], "dtype": "float32", "layout": "NCHW"}]
    models = [{"file": f"model.{fmt}", "format": fmt, "precision": "int8", "inputs": inputs,
               "outputs": [{"name": "out", "shape": [1, 100, 7], "dtype": "float32", "quantization": q}]}
              for fmt in formats]
    pre = ({"kind": "text", "max_length": 32, "model_input_names": ["input_ids"]} if kind == "text" else
           {"resize": None, "crop": None, "scale": 1 / 255, "mean": [0.0] * 3, "std": [1.0] * 3,
            "channel_order": "RGB"})
    man = {"name": "det", "target": {"name": "raspberry-pi-4"}, "runtime": {"threads": 4}, "models": models,
           "preprocess": pre, "stages": {"task": {"name": task}},
           "tools": {"numpy": "1.26.4", "onnxruntime": "1.23.0", "pillow": "11.3.0", "ai-edge-litert": "2.1.0",
                     "tokenizers": "0.22.2", "python": "3.11.7", "torch": "2.14.1"} if tools is None else tools}
    return render(man)


def test_bundle_readme_says_what_to_pip_install_on_the_device_pinned_to_the_validated_versions():
    """The bundle README never said what to install to run run.py on the device."""
    both = _readme_manifest(("onnx", "tflite"))
    assert "## Install on the device" in both and "Python 3.11.7" in both
    assert "pip install onnxruntime==1.23.0 numpy==1.26.4 pillow==11.3.0    # model.onnx" in both
    assert "pip install ai-edge-litert==2.1.0 numpy==1.26.4 pillow==11.3.0  # model.tflite" in both
    assert "`pip install onnxruntime numpy pillow`" in both and "tflite-runtime" in both   # the unpinned fallback
    assert "torch" not in both.split("## Install on the device")[1].split("```")[1]
    text = _readme_manifest(("onnx",), task="classify", kind="text")
    assert "pip install onnxruntime==1.23.0 numpy==1.26.4 tokenizers==0.22.2  # model.onnx" in text
    assert "pillow" not in text and "tflite-runtime" not in text
    # a manifest without the versions (an older bundle): the packages, unpinned
    old = _readme_manifest(("tflite",), tools={})
    assert "pip install ai-edge-litert numpy pillow  # model.tflite" in old


def test_bundle_readme_says_where_a_detectors_boxes_are_and_how_to_change_its_score_threshold():
    readme = _readme_manifest()
    assert "x1 y1 x2 y2 in the photo's own pixels" in readme and "--model-frame" in readme
    assert "(320 x 320)" in readme and "scoring 0.3 or more" in readme and "`--score-threshold S`" in readme
    assert "from 0.05" in readme
    assert "--score-threshold" not in _readme_manifest(task="classify")


def test_tool_versions_record_what_run_py_imports():
    """The README pins run.py's packages to the manifest's tool versions: every package it imports is recorded."""
    from edgepack.bundle.readme import install_packages
    from edgepack.bundle.report import TOOLS

    for fmt in ("onnx", "tflite"):
        for pre in ({}, {"kind": "text"}):
            assert set(install_packages({"preprocess": pre}, fmt)) <= set(TOOLS)


def test_a_bug_is_exit_70_with_the_debug_command_to_run_and_a_traceback_only_with_debug(monkeypatch, tmp_path):
    """An exception edgepack does not know is an internal error: exit 70, the message, and a hint that works as
    written (`edgepack build ... --debug` is 'No such option': --debug is the root command's option)."""
    import edgepack.api

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(edgepack.api, "build", boom)
    args = ["build", "toy_models:tiny_cnn", "--out", str(tmp_path / "b")]
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 70 and "Traceback" not in res.output
    err = json.loads(res.stdout)["error"]
    assert err["type"] == "InternalError" and err["message"] == "internal error: RuntimeError: boom"
    assert "`edgepack --debug build ...`" in err["hint"]
    debug = CliRunner().invoke(main, ["--debug", *args])
    assert isinstance(debug.exception, RuntimeError) and str(debug.exception) == "boom"


def test_runner_probabilities_are_the_scores_when_the_model_already_gives_them():
    """run.py's top classes carry a probability: the softmax of logits, or the scores themselves when the model
    ends in a softmax (a second softmax would flatten them towards uniform)."""
    import importlib.util

    import numpy as np

    from edgepack.bundle import report

    spec = importlib.util.spec_from_file_location("bundle_run_probs", report.runner_template())
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    probs = np.array([0.7, 0.2, 0.1], np.float32)
    np.testing.assert_array_equal(run.probabilities(probs), probs)
    logits = np.array([2.0, 0.0, -1.0], np.float32)
    got = run.probabilities(logits)
    assert got.sum() == pytest.approx(1.0) and got[0] == pytest.approx(np.exp(2) / (np.exp(2) + 1 + np.exp(-1)))


def test_runner_reads_a_decompression_bomb_as_an_unreadable_photo(tmp_path, monkeypatch):
    """Pillow refuses a photo of too many pixels with DecompressionBombError, which is neither an OSError nor a
    ValueError: run.py --file stopped the whole list there (exit 1) instead of noting that one input."""
    import importlib.util

    import numpy as np
    from PIL import Image

    from edgepack.bundle import report

    spec = importlib.util.spec_from_file_location("bundle_run_bomb", report.runner_template())
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big.png")
    pre = {"resize": 32, "crop": 32, "channel_order": "RGB", "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]}
    assert run.load_image(tmp_path / "big.png", pre, [1, 3, 32, 32])[0].shape == (1, 3, 32, 32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)   # 4,096 pixels > 2x: Pillow's error, not its warning
    with pytest.raises(ValueError, match="too large to read safely"):
        run.load_image(tmp_path / "big.png", pre, [1, 3, 32, 32])
