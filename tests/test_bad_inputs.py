"""Every bad input gets one clear line, a hint where one helps, a documented exit code, no traceback,
and leaves nothing under the output name (nor temporary folders)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import toy_models
from click.testing import CliRunner

from edgepack.cli import main

ROOT = Path(__file__).resolve().parents[1]
PI4 = (ROOT / "targets" / "raspberry-pi-4.toml").read_text()


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def _two_input_onnx(path: Path) -> str:
    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 32, 32])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnx 1.19 stamps IR 12, which onnxruntime 1.23 refuses (tested in test_bad_inputs2)
    onnx.save(model, path)
    return str(path)


def _make(kind: str, d: Path) -> str:
    """Create the bad input named by ``kind`` in folder d; return the path (or value) to pass."""
    x = np.zeros((16, 3, 32, 32), np.float32)
    makers = {
        "garbage.onnx": lambda: (d / "m.onnx").write_bytes(b"\x08\x07garbage" * 20) and str(d / "m.onnx"),
        "truncated.pt2": lambda: (d / "m.pt2").write_bytes(b"PK\x03\x04trunc") and str(d / "m.pt2"),
        "text.pt": lambda: (d / "m.pt").write_text("hello") and str(d / "m.pt"),
        "empty.onnx": lambda: (d / "e.onnx").write_bytes(b"") or str(d / "e.onnx"),
        "evil.pt": lambda: pickle.dump({"w": Evil()}, open(d / "evil.pt", "wb")) or str(d / "evil.pt"),
        "torchscript.pt": lambda: torch.jit.trace(toy_models.tiny_cnn(), torch.zeros(1, 3, 32, 32)).save(
            str(d / "ts.pt")) or str(d / "ts.pt"),
        "statedict.pt": lambda: torch.save(toy_models.tiny_cnn().state_dict(), d / "sd.pt") or str(d / "sd.pt"),
        "two_inputs.onnx": lambda: _two_input_onnx(d / "two.onnx"),
        "no_x.npz": lambda: _npz(d / "nox.npz", y=np.zeros(3)),
        "int.npz": lambda: _npz(d / "int.npz", x=x.astype(np.int64)),
        "rank3.npz": lambda: _npz(d / "r3.npz", x=x[0]),
        "nan.npz": lambda: _npz(d / "nan.npz", x=np.full_like(x, np.nan)),
        "inf.npz": lambda: _npz(d / "inf.npz", x=np.full_like(x, np.inf)),
        "two.npz": lambda: _npz(d / "two.npz", x=x[:2]),
        "labels_out_of_range.npz": lambda: _npz(d / "lab.npz", x=x[:4], y=np.array([0, 1, 2, 10])),
        "not_npz.npz": lambda: (d / "bad.npz").write_text("nope") and str(d / "bad.npz"),
        "empty_dir": lambda: (d / "empty").mkdir() or str(d / "empty"),
        "junk_dir": lambda: _junk_dir(d / "junk"),
        "typo.toml": lambda: (d / "t.toml").write_text(PI4.replace("opset =", "opsett =")) and str(d / "t.toml"),
        "range.toml": lambda: (d / "r.toml").write_text(PI4.replace("threads = 4", "threads = 999")) and str(
            d / "r.toml"),
        "cfg_typo.toml": lambda: (d / "c.toml").write_text('model = "toy_models:tiny_cnn"\nseeed = 1\n') and str(
            d / "c.toml"),
        "cfg_broken.toml": lambda: (d / "cb.toml").write_text("model = [") and str(d / "cb.toml"),
        "labels3.txt": lambda: (d / "l.txt").write_text("a\nb\nc\n") and str(d / "l.txt"),
        "wrong_head.pt": lambda: torch.save(toy_models.TinyCNN(num_classes=3).state_dict(), d / "w3.pt") or str(
            d / "w3.pt"),
        "val_classes": lambda: _class_dir(d / "classes"),
    }
    return makers[kind]()


def _junk_dir(path: Path) -> str:
    path.mkdir()
    for i in range(5):
        (path / f"f{i}.jpg").write_bytes(b"\x00not an image")
    return str(path)


def _class_dir(path: Path) -> str:
    src = sorted((ROOT / "calibration_data" / "images").glob("*.jpg"))[:3]
    for i, f in enumerate(src):
        (path / f"class{i}").mkdir(parents=True)
        (path / f"class{i}" / f.name).write_bytes(f.read_bytes())
    return str(path)


M = "toy_models:tiny_cnn"
C = "{calib}"
CASES = [
    # (id, args with {placeholders}, exit code, message)
    ("missing model", ["build", "nope.onnx"], 2, "model file not found"),
    ("model is a folder", ["build", "{dir}/sub.onnx"], 2, "not a file"),
    ("empty model", ["build", "{empty.onnx}"], 2, "model file is empty"),
    ("corrupt onnx", ["build", "{garbage.onnx}"], 2, "not a valid ONNX model"),
    ("truncated pt2", ["build", "{truncated.pt2}"], 2, "not a torch.export program"),
    ("pt that is text", ["build", "{text.pt}"], 2, "not a TorchScript archive"),
    ("state dict as model", ["build", "{statedict.pt}"], 2, "looks like a pickled state dict"),
    ("torchscript untrusted", ["build", "{torchscript.pt}"], 2, "can run code"),
    ("pickle as weights", ["build", M, "--weights", "{evil.pt}"], 2, "weights"),
    ("weights for another head", ["build", M, "--weights", "{wrong_head.pt}"], 2, "do not fit the architecture"),
    ("unknown model kind", ["build", "resnet"], 2, "cannot tell what kind of model"),
    ("unknown factory", ["build", "no_such_pkg.mod:make"], 2, "cannot import factory"),
    ("shape rejected", ["build", M, "--input-shape", "1,5,32,32"], 2, "does not accept input shape"),
    ("two inputs", ["build", "{two_inputs.onnx}", "--calib", C], 2, "has 2 inputs"),
    ("unknown target", ["build", M, "--target", "raspberry-pi-3"], 2, "unknown target"),
    ("profile typo", ["build", M, "--target", "{typo.toml}"], 2, "did you mean 'opset'"),
    ("profile out of range", ["build", M, "--target", "{range.toml}"], 2, "above the maximum 64"),
    ("config typo", ["build", "--config", "{cfg_typo.toml}"], 2, "did you mean 'seed'"),
    ("config not toml", ["build", "--config", "{cfg_broken.toml}"], 2, "not valid TOML"),
    ("calib folder empty", ["build", M, "--calib", "{empty_dir}"], 2, "holds no image files"),
    ("calib folder junk", ["build", M, "--calib", "{junk_dir}"], 2, "are not readable images"),
    ("npz without x", ["build", M, "--calib", "{no_x.npz}"], 2, "has no array 'x'"),
    ("npz int dtype", ["build", M, "--calib", "{int.npz}"], 2, "expected float32"),
    ("npz rank 3", ["build", M, "--calib", "{rank3.npz}"], 2, "has rank 3"),
    ("npz NaN", ["build", M, "--calib", "{nan.npz}"], 2, "NaN or infinite"),
    ("npz inf", ["build", M, "--calib", "{inf.npz}"], 2, "NaN or infinite"),
    ("not an npz", ["build", M, "--calib", "{not_npz.npz}"], 2, "cannot read calibration file"),
    ("too few calibration samples", ["build", M, "--calib", "{two.npz}"], 2, "only 2 calibration samples"),
    ("labels out of range", ["build", M, "--calib", C, "--val", "{labels_out_of_range.npz}"], 2,
     "the model has 10 outputs"),
    ("labels file size", ["build", M, "--calib", C, "--labels", "{labels3.txt}"], 2, "has 3 class names"),
    ("val classes vs outputs", ["build", M, "--calib", C, "--val", "{val_classes}"], 2, "3 class folders"),
    ("bad shape option", ["build", M, "--input-shape", "1,3,a"], 2, "comma-separated list of integers"),
    ("budget out of range", ["build", M, "--min-agreement", "1.5"], 2, "above the maximum 1"),
    ("unwritable output", ["build", M, "--calib", C, "--out", "/proc/edgepack-out/b"], 3, "cannot write"),
]


@pytest.mark.parametrize("case, args, code, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, args, code, message, tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "sub.onnx").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    out = tmp_path / "out" / "bundle"
    fills = {"{calib}": str(tiny_data["calib"]), "{dir}": str(tmp_path)}
    resolved = []
    for a in args:
        if a in fills:
            a = fills[a]
        elif a.startswith("{dir}"):
            a = a.replace("{dir}", str(tmp_path))
        elif a.startswith("{") and a.endswith("}"):
            a = _make(a[1:-1], tmp_path)
        resolved.append(a)
    if "--out" not in resolved:
        resolved += ["--out", str(out)]
    if "--input-shape" not in resolved and "{two_inputs.onnx}" not in args:
        resolved += ["--input-shape", "1,3,32,32"]
    result = CliRunner().invoke(main, resolved)
    assert result.exit_code == code, result.output
    assert message in result.output, result.output
    assert [ln[:7] for ln in result.output.splitlines()].count("Error: ") == 1 and "Traceback" not in result.output
    assert not out.exists() and not (out.parent / "bundle.zip").exists()
    assert not (out.parent.exists() and any(out.parent.iterdir())), list(out.parent.iterdir())
    assert not any((tmp_path / "tmp").iterdir()), "temporary files left behind"


@pytest.mark.parametrize("factory, said", [("tiny_cnn_float64", "the model is float64, not float32"),
                                           ("tiny_cnn_float64_head", "some of the model's weights are float64")])
def test_a_float64_model_is_named_as_such_with_the_fix(factory, said, tiny_data, tmp_path):
    """A model.double() model was refused as "the model does not accept input shape [1, 3, 32, 32]: ... bias
    type (double)", with the hint to pass --input-shape, which cannot help. The error names the dtype and the fix."""
    result = CliRunner().invoke(main, ["build", f"toy_models:{factory}", "--input-shape", "1,3,32,32", "--calib",
                                       str(tiny_data["calib"]), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert said in result.output and "Hint: convert the model to float32 first: model.float()" in result.output
    assert "input shape" not in result.output and "--input-shape" not in result.output, result.output
    assert not (tmp_path / "b").exists()


def test_full_output_location_is_an_output_error(tiny_data, tmp_path):
    """A disk that fills up while the bundle is written: exit 3, and nothing half-written is left."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        out = mnt / "bundle"
        result = CliRunner().invoke(main, ["build", M, "--calib", str(tiny_data["calib"]), "--input-shape",
                                           "1,3,32,32", "--latency-runs", "3", "--out", str(out)])
        assert result.exit_code == 3, result.output
        assert "cannot write the bundle" in result.output and "space" in result.output
        assert list(mnt.iterdir()) == [], list(mnt.iterdir())
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
