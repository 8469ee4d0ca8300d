"""The security holes of issue 13, one test each (every one of them fails on b819887):

- nothing read from a bundle names code to import (diagnose BUNDLE);
- --out / --force never replace, contain or sit inside an input;
- every file a manifest names resolves inside the bundle and is a regular file;
- the ssh device address cannot smuggle options to ssh, and ssh/scp options end with '--'.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgepack
from edgepack.cli import main
from edgepack.device import remote
from edgepack.errors import InputError
from edgepack.util import manifest_json, sha256_file

PACKAGE_ROOT = Path(edgepack.__file__).resolve().parents[1]  # the edgepack under test (a worktree's, or main's)
M = "toy_models:tiny_cnn"
FAST = ["--input-shape", "1,3,32,32", "--latency-runs", "3", "--target", "x86-64", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(result) -> bool:
    lines = result.output.splitlines()
    return [ln[:7] for ln in lines].count("Error: ") == 1 and "Traceback" not in result.output


@pytest.fixture(scope="module")
def bundle(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("secbundle") / "tiny"
    result = invoke("build", M, "--calib", tiny_data["calib"], "--val", tiny_data["val"], "--out", out, *FAST,
                    "--min-agreement", "0", "--max-accuracy-drop", "100")
    assert result.exit_code == 0, result.output
    return out


def _copy(bundle: Path, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    copy = where / bundle.name
    shutil.copytree(bundle, copy)
    return copy


def _rewrite(folder: Path, edit) -> None:
    """Edit manifest.json, then recompute its self-digest, as an attacker would."""
    man = json.loads((folder / "manifest.json").read_text())
    edit(man)
    (folder / "manifest.json").write_text(manifest_json(man))


# ------------------------------------------------------------------ code named by a bundle


def test_diagnose_bundle_never_imports_the_model_its_manifest_names(bundle, tiny_data, tmp_path):
    """A manifest whose config.model names a module shipped in the bundle: verify says OK, and diagnose, run from
    the folder holding the bundle, must not import it (b819887 imported and ran it)."""
    copy = _copy(bundle, tmp_path / "work")
    marker = tmp_path / "code-ran"
    evil = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\ndef make():\n    return None\n"
    (copy / "evil.py").write_text(evil)

    def edit(man):
        man["config"]["model"] = f"{copy.name}.evil:make"
        man["files"]["evil.py"] = {"sha256": sha256_file(copy / "evil.py"), "size_bytes": len(evil)}
    _rewrite(copy, edit)
    assert invoke("verify", copy).exit_code == 0
    env = {**os.environ, "PYTHONPATH": f"{PACKAGE_ROOT}:{Path(__file__).parent}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "edgepack.cli", "diagnose", copy.name, "--data",
                           str(tiny_data["val"]), "--json"], cwd=copy.parent, env=env, capture_output=True,
                          text=True, timeout=300)
    assert not marker.exists(), "diagnose imported code named by the bundle"
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows and {"stem.0", "head.0"} & {r["name"] for r in rows}


# ------------------------------------------------------------------ --out never overlaps an input


def _inputs(tmp: Path, tiny_data, image_folder) -> dict:
    """A project folder whose files are each an input of one build."""
    proj = tmp / "proj"
    proj.mkdir()
    shutil.copyfile(tiny_data["calib"], proj / "calib.npz")
    shutil.copyfile(tiny_data["val"], proj / "val.npz")
    (proj / "labels.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    (proj / "notes.txt").write_text("my notes\n")
    import torch
    import toy_models

    torch.save(toy_models.tiny_cnn().state_dict(), proj / "w.pt")
    torch.onnx.export(toy_models.tiny_cnn(), (torch.zeros(1, 3, 32, 32),), str(proj / "tiny.onnx"), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"])
    (proj / "cfg.toml").write_text('target = "x86-64"\n')
    return {"proj": proj, "images": image_folder}


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


OVERLAPS = [
    # (id, extra args (placeholders), --out)
    ("out is the calibration folder", ["--calib", "{images}"], "{images}"),
    ("out inside the calibration folder", ["--calib", "{images}"], "{images}/bundle"),
    ("out is the model's folder", ["{proj}/tiny.onnx", "--calib", "{proj}/calib.npz"], "{proj}"),
    ("out is the model file", ["{proj}/tiny.onnx", "--calib", "{proj}/calib.npz"], "{proj}/tiny.onnx"),
    ("out holds the weights", ["--weights", "{proj}/w.pt", "--calib", "{proj}/calib.npz"], "{proj}"),
    ("out holds the validation data", ["--val", "{proj}/val.npz", "--calib", "{images}"], "{proj}"),
    ("out holds the labels", ["--labels", "{proj}/labels.txt", "--calib", "{images}"], "{proj}"),
    ("out holds the config file", ["--config", "{proj}/cfg.toml", "--calib", "{images}"], "{proj}"),
    ("out.zip is the weights", ["--weights", "{proj}/w.pt", "--calib", "{images}"], "{proj}/w.pt/../w"),
    ("out is a link to the calibration folder", ["--calib", "{images}"], "{link}"),
    ("out is the current folder", ["--calib", "{images}"], "."),
    ("out is empty", ["--calib", "{images}"], ""),
    ("out is a parent of the current folder", ["--calib", "{images}"], ".."),
]


@pytest.mark.parametrize("case, extra, out", OVERLAPS, ids=[c[0] for c in OVERLAPS])
def test_out_never_replaces_or_overlaps_an_input(case, extra, out, tiny_data, image_folder, tmp_path,
                                                 monkeypatch):
    paths = _inputs(tmp_path, tiny_data, image_folder)
    (tmp_path / "link").symlink_to(image_folder)
    fills = {"{proj}": str(paths["proj"]), "{images}": str(image_folder), "{link}": str(tmp_path / "link")}

    def fill(a: str) -> str:
        for k, v in fills.items():
            a = a.replace(k, v)
        return a

    if case == "out.zip is the weights":
        shutil.move(paths["proj"] / "w.pt", paths["proj"] / "w.zip")
        extra = ["--weights", "{proj}/w.zip", "--calib", "{images}"]
        out = "{proj}/w"
    args = [fill(a) for a in extra]
    model = [] if args and args[0].endswith(".onnx") else [M]
    shape = [] if model == [] else ["--input-shape", "1,3,32,32"]
    monkeypatch.chdir(paths["proj"] if case != "out is a parent of the current folder" else image_folder)
    before = {"proj": _snapshot(paths["proj"]), "images": _snapshot(image_folder)}
    result = invoke("build", *model, *args, *shape, "--out", fill(out), "--force", "--latency-runs", "3",
                    "--target", "x86-64")
    assert result.exit_code == 3, result.output
    assert one_error(result), result.output
    assert _snapshot(paths["proj"]) == before["proj"] and _snapshot(image_folder) == before["images"]
    assert not [p for p in paths["proj"].parent.rglob(".*old-*")]


def test_force_replaces_only_a_bundle_never_a_user_folder(tiny_data, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    result = invoke("build", M, "--calib", tiny_data["calib"], "--out", folder, "--force", *FAST)
    assert result.exit_code == 3 and "not an edgepack bundle" in result.output, result.output
    assert (folder / "thesis.tex").read_text() == "years of work"


# ------------------------------------------------------------------ bundles never reach outside themselves


def _escape_model(copy: Path, outside: Path) -> None:
    outside.mkdir()
    shutil.move(copy / "model.onnx", outside / "model.onnx")

    def edit(man):
        entry = man["files"].pop("model.onnx")
        man["models"][0]["file"] = man["model"]["file"] = "../outside/model.onnx"
        man["models"][0]["sha256"] = entry["sha256"]
    _rewrite(copy, edit)


def _escape_golden(copy: Path, outside: Path) -> None:
    outside.mkdir()
    shutil.move(copy / "golden.npz", outside / "golden.npz")

    def edit(man):
        man["files"].pop("golden.npz")
        man["golden"]["file"] = "../outside/golden.npz"
    _rewrite(copy, edit)


def _absolute_model(copy: Path, outside: Path) -> None:
    def edit(man):
        man["models"][0]["file"] = "/etc/passwd"
    _rewrite(copy, edit)


def _symlinked_model(copy: Path, outside: Path) -> None:
    outside.mkdir()
    shutil.move(copy / "model.onnx", outside / "model.onnx")
    (copy / "model.onnx").symlink_to(outside / "model.onnx")


def _symlinked_manifest(copy: Path, outside: Path) -> None:
    outside.mkdir()
    shutil.move(copy / "manifest.json", outside / "manifest.json")
    (copy / "manifest.json").symlink_to(outside / "manifest.json")


def _symlinked_golden_in_files(copy: Path, outside: Path) -> None:
    outside.mkdir()
    np.savez(outside / "g.npz", input=np.zeros((1, 3, 32, 32), np.float32))
    (copy / "golden.npz").unlink()
    (copy / "golden.npz").symlink_to(outside / "g.npz")

    def edit(man):
        man["files"]["golden.npz"]["sha256"] = sha256_file(outside / "g.npz")
    _rewrite(copy, edit)


ESCAPES = [("model file outside (..)", _escape_model), ("golden file outside (..)", _escape_golden),
           ("model file absolute", _absolute_model), ("model.onnx is a link outside", _symlinked_model),
           ("manifest.json is a link outside", _symlinked_manifest),
           ("listed golden.npz is a link outside", _symlinked_golden_in_files)]


@pytest.mark.parametrize("case, make", ESCAPES, ids=[c[0] for c in ESCAPES])
def test_verify_refuses_files_outside_the_bundle(case, make, bundle, tmp_path):
    copy = _copy(bundle, tmp_path / "b")
    make(copy, tmp_path / "b" / "outside")
    result = invoke("verify", copy)
    assert result.exit_code == 5, result.output
    assert one_error(result) and ("refused" in result.output or "outside" in result.output), result.output
    assert "OK" not in result.output


@pytest.mark.parametrize("case, make", ESCAPES[:3], ids=[c[0] for c in ESCAPES[:3]])
def test_inspect_refuses_a_manifest_naming_files_outside(case, make, bundle, tmp_path):
    copy = _copy(bundle, tmp_path / "b")
    make(copy, tmp_path / "b" / "outside")
    result = invoke("inspect", copy)
    assert result.exit_code == 5 and one_error(result), result.output


# ------------------------------------------------------------------ ssh option injection


BAD_ADDRESSES = ["ssh://-q@host", "ssh://-oProxyCommand=touch%20x@host", "ssh://-oProxyCommand=x@host",
                 "ssh://pi@-oProxyCommand=x", "ssh://pi@-host", "ssh://pi:secret@host", "ssh://pi@host:0",
                 "ssh://pi@host:+22", "ssh://pi@host:99999", "ssh://pi@ho st", "ssh://p i@host", "ssh://pi@host?x=1",
                 "ssh://pi@[::1", "ssh://pi@host;id", "ssh://pi@$(id)", "ssh://pi\n@host", "ssh://pi@hóst"]


@pytest.mark.parametrize("url", BAD_ADDRESSES)
def test_device_address_grammar_is_strict(url):
    with pytest.raises(InputError):
        remote.parse_device(url)


def test_good_addresses_still_parse():
    assert remote.parse_device("ssh://pi@raspberrypi.local:2222") == remote.Device("pi", "raspberrypi.local", 2222)
    assert remote.parse_device("ssh://10.0.0.7") == remote.Device(None, "10.0.0.7", 22)
    assert remote.parse_device("ssh://user_1@[fe80::1]:22").host == "fe80::1"


def test_bench_refuses_an_option_as_user_and_ends_ssh_options(bundle, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        out = "/tmp/edgepack-bench.x\n" if "mktemp" in cmd[-1] else \
            '{"p50_ms": 1.0, "p90_ms": 2.0, "runs": 3}\n' if "--time-golden" in cmd[-1] else "golden ok\n"
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    result = invoke("bench", bundle, "--device", "ssh://-q@host", "--runs", "3")
    assert result.exit_code == 2 and one_error(result) and "user name" in result.output, result.output
    assert calls == []
    remote.bench(bundle, "ssh://pi@host:2222", runs=3)
    assert calls and all(c[0] in ("ssh", "scp") for c in calls)
    for cmd in calls:
        i = cmd.index("--")
        assert all(not a.startswith("-") for a in cmd[i + 1:]), cmd
        assert cmd[i + 1] in ("pi@host", str(bundle.absolute())), cmd


def test_out_may_sit_inside_a_factory_package_but_never_replace_it(tiny_data, tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text("import toy_models\n\ndef make():\n    return toy_models.tiny_cnn()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    refused = invoke("build", "mypkg.nets:make", "--calib", tiny_data["calib"], "--out", "mypkg", "--force", *FAST)
    assert refused.exit_code == 3 and "model package" in refused.output and one_error(refused), refused.output
    assert (pkg / "nets.py").is_file()
    inside = invoke("build", "mypkg.nets:make", "--calib", tiny_data["calib"], "--out", "mypkg/build/b", *FAST)
    assert inside.exit_code in (0, 1), inside.output
    assert (pkg / "build" / "b" / "manifest.json").is_file() and (pkg / "nets.py").is_file()


def test_verify_lists_a_users_photo_but_refuses_code_beside_run_py(bundle, tmp_path):
    """The bundle README says `python3 run.py photo.jpg` in the folder, then `edgepack verify .`: a photo or an
    inputs list there was reported as damage (exit 5). Code is still refused: run.py would import a numpy.py."""
    copy = _copy(bundle, tmp_path / "b")
    (copy / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (copy / "inputs.txt").write_text("photo.jpg\n")
    result = invoke("verify", copy)
    assert result.exit_code == 0, result.output
    assert "photo.jpg" in result.output and "not part of the bundle" in result.output
    (copy / "numpy.py").write_text("raise SystemExit('hijacked')\n")
    result = invoke("verify", copy)
    assert result.exit_code == 5 and "numpy.py: not listed in the manifest" in result.output, result.output
