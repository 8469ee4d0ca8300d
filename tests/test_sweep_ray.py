"""`edgepack sweep` on real Ray (slow): the embedded Ray with Ctrl-C and --resume, a two-node loopback cluster
with a node killed mid-trial compared against sequential `edgepack build` runs, and sweep.html in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.bundle.read import verify
from edgepack.cli import main
from edgepack.sweep import plan, results, spec, store
from edgepack.sweep.html import render

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
pytestmark = pytest.mark.slow

SWEEP = """
models = ["toy_models:tiny_cnn"]
targets = ["x86-64"]
[sweep]
name = "toy"
[base]
calib = "calib.npz"
val = "val.npz"
input_shape = [1, 3, 32, 32]
latency_runs = 5
max_search_time = 0
[grid]
calibration_method = ["minmax", "percentile"]
"""
GOOD_THIRD = '[[trial]]\nper_channel = false\n'
FAILING_THIRD = '[[trial]]\nweights = "missing.pt"\n'


def _sweep_dir(tmp_path: Path, tiny_data: dict, third: str) -> Path:
    for name in ("calib", "val"):
        (tmp_path / f"{name}.npz").write_bytes(tiny_data[name].read_bytes())
    (tmp_path / "sweep.toml").write_text(SWEEP + third)
    return tmp_path


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgepack.cli", "sweep", "sweep.toml", "--out", "out", *args]


def _nothing_half_written(out: Path) -> dict[str, dict]:
    """Every folder under trials/ is a complete trial (its bundle verifies); nothing is left in staging."""
    staging = out / store.STAGING
    assert not staging.exists() or not any(staging.iterdir())
    rows = store.finished(out)
    assert sorted(rows) == sorted(d.name for d in (out / store.TRIALS).iterdir())
    for key, row in rows.items():
        if row["status"] != "error":
            assert verify(out / store.TRIALS / key / store.BUNDLE)[-1]
            assert (out / store.TRIALS / key / f"{store.BUNDLE}.zip").stat().st_size > 0
    return rows


def _ray_leftovers(tmp: Path) -> list[str]:
    """What the embedded Rays started with TMPDIR=tmp left behind: folders there, or processes naming it
    (the machine's timing-gate file stays: a few bytes, shared by every sweep of this user)."""
    import psutil

    procs = [p.pid for p in psutil.process_iter(["cmdline"]) if str(tmp) in " ".join(p.info["cmdline"] or [])]
    return sorted(str(p) for p in tmp.iterdir() if not p.name.startswith("edgepack-timing-gate-")) + \
        [f"pid {p}" for p in procs]


def test_embedded_ray_ctrl_c_keeps_finished_trials_and_resume_builds_only_the_missing(tmp_path, tiny_data):
    import tempfile

    d = _sweep_dir(tmp_path, tiny_data, FAILING_THIRD)
    tmp = Path(tempfile.mkdtemp(prefix="ep-emb-"))  # short: Ray's socket paths must stay under 107 characters
    env = {**_env(), "TMPDIR": str(tmp)}
    token = Path.home() / ".ray" / "auth_token"
    had_token = token.exists()
    try:
        proc = subprocess.Popen(_cli("--num-cpus", "1"), cwd=d, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,  # Ctrl-C reaches it even if run in background
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 900
        while not list((d / "out" / store.TRIALS).glob(f"*/{store.RECORD}")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # Ctrl-C while the next trial builds
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 130, err[-2000:]
        assert "--resume" in err
        kept = _nothing_half_written(d / "out")
        assert 1 <= len(kept) < 3
        assert _ray_leftovers(tmp) == []

        res = subprocess.run(_cli("--resume"), cwd=d, env=env, capture_output=True, text=True, timeout=1200)
        assert f"resuming: {3 - len(kept)} of 3 trials missing ({len(kept)} finished, kept)" in res.stderr, \
            res.stderr
        assert res.returncode == 1, res.stderr  # one trial fails on its own (missing weights): recorded, exit 1
        assert _ray_leftovers(tmp) == []
        assert list(tmp.glob("edgepack-timing-gate-*.json"))  # the trials shared the machine's gate
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = _nothing_half_written(d / "out")
    assert set(kept) <= set(rows) and len(rows) == 3
    doc = json.loads((d / "out" / "sweep.json").read_text())
    assert doc["run"]["ran"] == 3 - len(kept) and doc["counts"] == {"passed": 2, "budget-missed": 0, "error": 1}
    failed = next(r for r in doc["trials"] if r["status"] == "error")
    assert failed["error"]["type"] == "InputError" and "missing.pt" in failed["error"]["message"]
    assert all(r["timing"] == "exclusive" for r in doc["trials"] if r["status"] != "error")
    assert token.exists() == had_token  # the embedded Ray wrote no auth token
    _screenshot_shows_front_and_best(d / "out" / "sweep.html", tmp_path)


def test_two_node_loopback_cluster_survives_a_killed_node_and_matches_sequential_builds(tmp_path, tiny_data):
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip: the cluster runs in a network namespace that has only loopback")
    d = _sweep_dir(tmp_path, tiny_data, GOOD_THIRD)
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
           str(TESTS / "sweep_cluster.py"), str(d)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=2400)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    err = (d / "sweep.stderr").read_text()
    assert info["sweep_exit"] == 0, err[-3000:]
    assert info["killed"], "no trial started on the worker node"
    assert "3 trials on Ray cluster at 127.0.0.1:" in err and "(2 node(s), 2 CPUs)" in err, err[:2000]
    rows = _nothing_half_written(d / "out")
    assert len(rows) == 3 and all(r["status"] == "passed" for r in rows.values())
    killed = next(r for r in rows.values() if r["key"].startswith(info["killed"]["trial_folder"].split("-", 1)[1]))
    assert killed["model_sha256"]  # the trial on the killed node was retried and built
    _compare_with_sequential_builds(d, rows, tmp_path / "seq")


def _compare_with_sequential_builds(d: Path, rows: dict[str, dict], seq: Path) -> None:
    """`edgepack build` of each trial, one after another, gives the same model bytes and quality metrics."""
    old = Path.cwd()
    os.chdir(d)
    try:
        for trial in plan.expand(spec.load("sweep.toml")):
            cfg = seq / f"{trial.key[:12]}.toml"
            cfg.parent.mkdir(exist_ok=True)
            settings = {k: v for k, v in trial.settings.items() if k not in ("model", "target")}
            cfg.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
            out = seq / trial.key[:12]
            res = CliRunner().invoke(main, ["build", trial.model, "--target", trial.target, "--config", str(cfg),
                                            "--out", str(out), "--json"])
            assert res.exit_code == 0, res.output
            man = json.loads((out / "manifest.json").read_text())
            row, v = rows[trial.key], man["validation"]
            assert man["model"]["sha256"] == row["model_sha256"], trial.name
            assert [v[m] for m in ("accuracy_fp32", "accuracy_int8", "agreement", "sqnr_db")] == \
                [row[m] for m in ("accuracy_fp32", "accuracy_int8", "agreement", "sqnr_db")], trial.name
    finally:
        os.chdir(old)


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (scripts/setup-env.sh installs it)")
    return chromium


def _screenshot_shows_front_and_best(page: Path, tmp_path: Path, best: bool = True) -> None:
    shot = tmp_path / "sweep.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1000,1400",
                    f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    green = np.abs(pixels - [0x1B, 0x9E, 0x77]).sum(1) < 40    # Pareto-front markers (and the line)
    orange = np.abs(pixels - [0xD9, 0x5F, 0x02]).sum(1) < 40   # the best bundle's ring
    assert green.sum() > 150 and (orange.sum() > 60) == best, (green.sum(), orange.sum())


def test_the_fashion_mnist_example_sweep_renders_in_chromium(tmp_path):
    """The committed results of examples/fashion_mnist/sweep.toml (12 trials, written by benchmarks/bench_sweep.py)
    render to a page with one plot per target, its Pareto front, and the best bundle's ring when one met every
    budget."""
    doc = json.loads((ROOT / "examples/fashion_mnist/sweep_results/sweep.json").read_text())
    assert len(doc["trials"]) >= 12 and len(doc["targets"]) == 2
    for target, summary in doc["targets"].items():
        mine = [r for r in doc["trials"] if r["target"] == target]
        assert [r["key"] for r in results.pareto(mine)] == summary["pareto"] and summary["pareto"]
    page = tmp_path / "sweep.html"
    page.write_text(render(doc))
    _screenshot_shows_front_and_best(page, tmp_path, best=any(s["best"] for s in doc["targets"].values()))
