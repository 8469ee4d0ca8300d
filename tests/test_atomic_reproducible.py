"""Atomic output and reproducible bundles (hardening)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# Bytes that depend on measurements taken during the build, not on its inputs: latency, peak memory
# and stage timings vary run to run on a shared machine, so manifest.json, report.md and report.html differ in
# those numbers (and only there). Everything else must be byte-identical.
# The verdicts and warnings that follow from those numbers (the latency budget row, "passed", and
# warnings quoting a measured ratio) are the only other differences.
# manifest_sha256 (the manifest's digest of itself) covers all of that, so it differs as well.
MEASURED = {"latency_ms", "peak_memory_mb", "timings_s", "warnings", "passed", "manifest_sha256"}


def _build(out: Path, tiny_data, extra=()):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "edgepack.cli", "build", "toy_models:tiny_cnn", "--target", "x86-64",
           "--calib", str(tiny_data["calib"]), "--val", str(tiny_data["val"]), "--out", str(out),
           "--input-shape", "1,3,32,32", "--latency-runs", "3", "--quiet", *extra]
    return subprocess.run(cmd, cwd=TESTS, env=env, capture_output=True, text=True, check=False)


def _strip_measured(obj):
    if isinstance(obj, dict):
        if obj.get("kind") == "measured-host" and "limit" in obj:
            return {"name": obj["name"], "limit": obj["limit"]}
        return {k: _strip_measured(v) for k, v in obj.items() if k not in MEASURED}
    if isinstance(obj, list):
        return [_strip_measured(v) for v in obj]
    return obj


def test_two_builds_give_identical_bundle_bytes(tiny_data, tmp_path):
    a, b = tmp_path / "a" / "bundle", tmp_path / "b" / "bundle"
    for out in (a, b):
        proc = _build(out, tiny_data)
        assert proc.returncode in (0, 1), proc.stderr
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name in ("manifest.json", "report.md", "report.html"):
            continue
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between builds"
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    ma["config"]["out"] = mb["config"]["out"] = None
    for m in (ma, mb):  # the reports' digests follow their measured numbers
        m["files"].pop("report.md")
        m["files"].pop("report.html")
    assert _strip_measured(ma) == _strip_measured(mb)
    with zipfile.ZipFile(a.with_name("bundle.zip")) as za, zipfile.ZipFile(b.with_name("bundle.zip")) as zb:
        assert [i.filename for i in za.infolist()] == [i.filename for i in zb.infolist()]
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in za.infolist())
        for name in ("bundle/model.onnx", "bundle/golden.npz", "bundle/run.py"):
            assert hashlib.sha256(za.read(name)).digest() == hashlib.sha256(zb.read(name)).digest()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_build_leaves_nothing(tiny_data, tmp_path, sig):
    """Interrupt the build while it quantizes: no bundle, no zip, no temporary folders."""
    out = tmp_path / "out" / "bundle"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(TESTS), "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "edgepack.cli", "build", "toy_models:tiny_cnn", "--target", "x86-64",
           "--calib", str(tiny_data["calib"]), "--out", str(out), "--input-shape", "1,3,32,32"]
    # A shell starts background jobs with SIGINT ignored, and the child would inherit that (CI runs in the
    # background): give it the default disposition, as a foreground build that a user Ctrl-Cs has.
    proc = subprocess.Popen(cmd, cwd=TESTS, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    deadline = time.time() + 120
    while "quantizing" not in seen and time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert "quantizing" in seen, seen
    proc.send_signal(sig)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, seen + rest
    assert "interrupted" in rest
    assert not out.exists() and not out.with_name("bundle.zip").exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))
    assert not any(tmp.iterdir()), list(tmp.iterdir())
