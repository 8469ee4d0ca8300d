"""`edgepack sweep` without Ray: the sweep file, the plan and its keys, the timing gate's policy, the Pareto
front, the atomic trial store, sweep.html and the CLI's --dry-run / resume counting. (Ray runs in
test_sweep_ray.py, marked slow.)"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.errors import ConfigError, OutputError
from edgepack.sweep import plan, results, spec, store
from edgepack.sweep.gate import FileGate, GateState, gated_latency
from edgepack.sweep.html import render

SWEEP = """
models = ["toy_models:tiny_cnn"]
targets = ["x86-64", "raspberry-pi-4"]
[base]
calib = "calib.npz"
val = "val.npz"
input_shape = [1, 3, 32, 32]
[grid]
"prune.ratio" = ["none", 0.25]
calibration_method = ["minmax", "percentile"]
[[trial]]
target = "x86-64"
per_channel = false
"""


@pytest.fixture()
def sweep_dir(tmp_path, tiny_data, monkeypatch):
    for name in ("calib", "val"):
        (tmp_path / f"{name}.npz").write_bytes(tiny_data[name].read_bytes())
    (tmp_path / "sweep.toml").write_text(SWEEP)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_sweep_file_problems_are_all_reported_at_once_with_did_you_mean():
    text = """models = []
targets = ["raspbery-pi-4"]
colour = 1
[base]
out = "x"
calibraton_method = "minmax"
[grid]
calibration_method = "minmax"
[sweep]
cpus_per_trial = 0
"""
    with pytest.raises(ConfigError) as err:
        spec.parse(text, where="s.toml")
    msg = err.value.message
    for part in ("unknown key 'colour'", "cpus_per_trial = 0 is below the minimum 1"):
        assert part in msg, msg
    with pytest.raises(ConfigError) as err:
        spec.parse(text.replace("colour = 1\n", "").replace("cpus_per_trial = 0", "cpus_per_trial = 1"),
                   where="s.toml")
    msg = err.value.message
    for part in ("models is empty", "did you mean 'raspberry-pi-4'?", "'out' cannot be set here",
                 "unknown setting 'calibraton_method' (did you mean 'calibration_method'?)",
                 "calibration_method must be a non-empty list"):
        assert part in msg, msg


def test_grid_times_models_times_targets_plus_explicit_trials(sweep_dir):
    trials = plan.expand(spec.load("sweep.toml"))
    assert len(trials) == 2 * 2 * 2 + 1 and len({t.key for t in trials}) == len(trials)
    unpruned = [t for t in trials if t.varied.get("prune.ratio") == "none"]
    assert unpruned and all("prune" not in t.settings for t in unpruned)
    pruned = [t for t in trials if t.varied.get("prune.ratio") == 0.25]
    assert all(t.settings["prune"] == {"ratio": 0.25} for t in pruned)
    explicit = trials[-1]
    assert explicit.target == "x86-64" and explicit.settings["per_channel"] is False
    assert Path(explicit.settings["calib"]).is_absolute()


def test_keys_follow_contents_not_paths_and_a_changed_setting_touches_only_its_trials(sweep_dir, tmp_path_factory):
    before = {t.name: t.key for t in plan.expand(spec.load("sweep.toml"))}
    moved = tmp_path_factory.mktemp("moved")
    for name in ("calib.npz", "val.npz", "sweep.toml"):
        (moved / name).write_bytes((sweep_dir / name).read_bytes())
    assert {t.name: t.key for t in plan.expand(spec.load(moved / "sweep.toml"), cwd=moved)} == before
    changed = SWEEP.replace('"percentile"]', '"entropy"]')
    (sweep_dir / "sweep.toml").write_text(changed)
    after = {t.name: t.key for t in plan.expand(spec.load("sweep.toml"))}
    kept = set(before.values()) & set(after.values())
    assert len(kept) == 5 and all("minmax" in n or "per_channel" in n for n, k in after.items() if k in kept)
    (sweep_dir / "val.npz").write_bytes((sweep_dir / "calib.npz").read_bytes())  # other data: every key changes
    assert not set(before.values()) & {t.key for t in plan.expand(spec.load("sweep.toml"))}


def test_invalid_trial_settings_are_collected_into_one_error(sweep_dir):
    (sweep_dir / "sweep.toml").write_text(SWEEP.replace('"percentile"]', '"median"]').replace("0.25]", "7.0]"))
    with pytest.raises(ConfigError) as err:
        plan.expand(spec.load("sweep.toml"))
    assert "calibration_method = 'median' is not allowed" in err.value.message
    assert "ratio = 7.0 is above the maximum" in err.value.message


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _gate(*dead, clock=None):
    return GateState(alive=lambda pid: pid not in dead, clock=clock or Clock())


def test_gate_times_only_when_every_other_trial_on_the_node_is_parked():
    clock = Clock()
    g = _gate(clock=clock)
    assert g.enter("a", 1) and g.enter("b", 2)
    g.park("a", 1)
    assert not g.may_time("a")          # b still computes
    g.park("b", 2)
    assert g.may_time("a") and not g.may_time("b")  # one at a time, first come first
    assert not g.enter("c", 3)          # a newcomer waits at the door while anyone is parked or timing
    g.done("a")
    clock.t += 0.5
    g.park("a", 1)                      # a times again within its hold (N threads, then one): still its window
    assert g.may_time("a") and not g.may_time("b")
    g.done("a")
    clock.t += 2.0                      # the hold is over: a computes again
    assert not g.may_time("b")
    g.leave("a")
    assert g.may_time("b") and not g.admitted("c")
    g.done("b")
    assert not g.admitted("c")          # b's hold
    clock.t += 2.0
    assert g.admitted("c")              # nobody parked or timing: the door opens


def test_gate_forgets_trials_whose_worker_died():
    g = _gate(2)
    g.enter("a", 1)
    g.enter("b", 2)
    g.park("a", 1)
    assert not g.may_time("a")
    assert g.reap() == ["b"] and g.may_time("a")


def test_gate_gives_up_after_waiting_and_labels_shared():
    g = _gate()
    g.enter("a", 1)
    g.enter("b", 2)
    g.park("a", 1)
    g.give_up("a")
    assert g.trials["a"][1] == "run" and g.queue == []


def test_the_file_gate_holds_a_timing_until_the_other_trial_stops_computing(tmp_path):
    import os
    import threading
    import time

    gate, pid, got = FileGate(tmp_path / "gate.json", max_wait_s=60), os.getpid(), []
    gate.enter("a", pid)
    gate.enter("b", pid)
    waiter = threading.Thread(target=lambda: got.append(gate.request("a", pid)))
    waiter.start()
    time.sleep(0.5)
    assert got == []                     # b is still computing: a waits (with sleeps, not inside Ray)
    gate.leave("b")
    waiter.join(10)
    assert got == ["exclusive"]
    assert FileGate(tmp_path / "gate.json", max_wait_s=0.3).request("c", pid) == "shared"  # a holds it: give up


def test_without_a_gate_latency_is_labelled_shared_and_measure_is_restored(monkeypatch):
    from edgepack.device import measure

    calls = []
    monkeypatch.setattr(measure, "latency", lambda *a, **k: calls.append(a) or {"m": {"p50": 1.0}})
    original, record = measure.latency, {}
    with gated_latency(None, "k", record):
        assert measure.latency is not original and record["timing"] == "untimed"
        assert measure.latency({"m": ("onnx", "m.onnx")}, None, threads=1, runs=3, workdir=Path(".")) == \
            {"m": {"p50": 1.0}}
    assert measure.latency is original and record["timing"] == "shared" and len(calls) == 1


def _row(key, target, quality, latency, size, passed=True, status=None):
    return {"key": key, "name": key, "target": target, "quality": quality, "latency_ms": latency,
            "size_bytes": size, "passed": passed, "status": status or ("passed" if passed else "budget-missed"),
            "metric": "accuracy_int8", "latency_kind": "measured-host", "bundle": f"trials/{key}/bundle",
            "budgets": [{"name": "size_mb", "value": size / 1e6, "limit": 10.0, "passed": passed}],
            "timing": "exclusive", "seconds": 1.0}


ROWS = [_row("a", "t", 90.0, 2.0, 4e6), _row("b", "t", 88.0, 1.0, 2e6), _row("c", "t", 87.0, 1.5, 2e6),
        _row("d", "t", 91.0, 3.0, 5e6, passed=False), _row("e", "u", 50.0, 1.0, 1e6),
        {"key": "f", "name": "f", "target": "t", "status": "error", "error": {"type": "InputError",
                                                                              "message": "bad", "hint": None}}]


def test_pareto_front_and_best_bundle_per_target():
    mine = [r for r in ROWS if r["target"] == "t"]
    assert [r["key"] for r in results.pareto(mine)] == ["b", "a", "d"]  # c is slower and worse than b
    assert results.best(mine)["key"] == "a"                             # d is better but missed a budget
    summary = results.summarize(ROWS, ["t", "u"])
    assert summary["t"]["errors"] == 1 and summary["u"]["best"] == "e"


def test_a_generic_models_trials_are_ranked_by_their_worst_output_sqnr():
    """A generic model has no accuracy, agreement, mIoU or mAP: every trial of a generic sweep had a null quality,
    so the front was empty and the summary said 'no trial met every budget' while all 8 had."""
    from types import SimpleNamespace

    def manifest(sqnr, p50):
        v = {"agreement": None, "sqnr_db": sqnr, "latency_ms": {"int8": {"p50": p50}, "fp32": {"p50": 2 * p50},
                                                                "threads": 1}, "budgets": []}
        return {"validation": v, "passed": True, "model": {"size_bytes": 1000, "sha256": "0" * 64},
                "runtime": {"threads": 1}}

    trial = lambda key: SimpleNamespace(key=key, name=key, model="m", target="t", varied={})  # noqa: E731
    rows = [results.row(trial(k), {"status": "passed"}, manifest(q, ms))
            for k, q, ms in (("a", 30.0, 2.0), ("b", 25.0, 1.0), ("c", 20.0, 1.5))]
    assert {r["metric"] for r in rows} == {"sqnr_db"} and [r["quality"] for r in rows] == [30.0, 25.0, 20.0]
    assert [r["key"] for r in results.pareto(rows)] == ["b", "a"] and results.best(rows)["key"] == "a"
    assert results.summarize(rows, ["t"])["t"]["unranked"] == 0


def test_sweep_html_is_self_contained_and_marks_front_and_best():
    doc = results.document("demo", "s.toml", ROWS, ["t", "u"], {"ran": 6, "seconds": 3, "cluster": "x"})
    page = render(doc)
    assert "<svg" in page and "<script" not in page and "http" not in page.replace("https://", "")
    assert page.count("<circle") == 5 + 2   # five built trials, plus the best ring of each target
    assert "stroke='#D95F02'" in page and "fill='#1B9E77'" in page and "bad" in page


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_trial_appears_whole_or_not_at_all(tmp_path):
    store.write_trial(tmp_path, "k1", {"status": "passed"}, _zip({"bundle/manifest.json": b"{}"}))
    assert (tmp_path / "trials/k1/bundle/manifest.json").is_file() and (tmp_path / "trials/k1/bundle.zip").is_file()
    with pytest.raises(OutputError):
        store.write_trial(tmp_path, "k2", {"status": "passed"}, _zip({"../evil": b"x"}))
    assert not (tmp_path / "trials/k2").exists() and not any((tmp_path / store.STAGING).glob("*"))
    (tmp_path / "trials/stray").mkdir()  # a folder without trial.json is not a finished trial
    assert list(store.finished(tmp_path)) == ["k1"]


def _finish_fake(out: Path, trial, status="passed"):
    store.write_trial(out, trial.key, {"key": trial.key, "name": trial.name, "target": trial.target,
                                       "status": status}, None)


def test_cli_dry_run_counts_what_resume_would_build(sweep_dir):
    trials = plan.expand(spec.load("sweep.toml"))
    out = sweep_dir / "out"
    for t in trials[:3]:
        _finish_fake(out, t)
    _finish_fake(out, trials[3], status="error")
    runner = CliRunner()
    res = runner.invoke(main, ["sweep", "sweep.toml", "--out", str(out), "--dry-run", "--resume"])
    assert res.exit_code == 0, res.output
    assert "9 trials, 5 to build" in res.output and res.output.count(" kept ") == 4
    res = runner.invoke(main, ["sweep", "sweep.toml", "--out", str(out), "--dry-run", "--resume", "--retry-failed"])
    assert "9 trials, 6 to build" in res.output


def test_cli_refuses_an_earlier_sweep_without_resume_or_force(sweep_dir):
    trials = plan.expand(spec.load("sweep.toml"))
    _finish_fake(sweep_dir / "out", trials[0])
    res = CliRunner().invoke(main, ["sweep", "sweep.toml", "--out", "out"])
    assert res.exit_code == 3 and "already holds 1 finished trial(s)" in res.output and "--resume" in res.output


def test_resume_with_nothing_missing_writes_results_without_starting_ray(sweep_dir, monkeypatch):
    from edgepack.sweep import api, runner

    trials = plan.expand(spec.load("sweep.toml"))
    for t in trials:
        _finish_fake(sweep_dir / "out", t)
    monkeypatch.setattr(runner, "session", lambda *a: pytest.fail("Ray must not start"))
    seen = []
    result = api.run("sweep.toml", "out", resume=True, progress=seen.append)
    assert result.ran == 0 and result.kept == 9 and seen[0].todo == 0
    doc = json.loads((sweep_dir / "out/sweep.json").read_text())
    assert len(doc["trials"]) == 9 and (sweep_dir / "out/sweep.html").is_file()
    res = CliRunner().invoke(main, ["sweep", "sweep.toml", "--out", "out", "--resume", "--json"])
    said = json.loads(res.stdout)  # a script picks each target's bundle from stdout alone
    assert Path(said["results"]).is_file() and set(said["targets"]) == set(doc["targets"])
    assert all("best_bundle" in t and "unranked" in t for t in said["targets"].values())


def test_edgepack_sweep_is_both_the_function_and_the_package():
    import edgepack
    import edgepack.sweep.spec  # noqa: F401  (importing the package must not break the function)

    assert callable(edgepack.sweep) and edgepack.sweep.run is not None


def test_terminal_progress_counts_trials_and_estimates_the_time_left(capsys):
    from edgepack.sweep.api import SweepProgress
    from edgepack.sweep.cli_ui import SweepUi

    ui = SweepUi()
    ui.progress(SweepProgress(total=5, todo=2, cluster="embedded local Ray (1 node(s), 2 CPUs)"))
    row = {"name": "m @ x86-64 | calibration_method=minmax", "status": "passed", "seconds": 40.0}
    ui.progress(SweepProgress(total=5, todo=2, done=1, elapsed_s=60.0, eta_s=60.0, last=row))
    ui.progress(SweepProgress(total=5, todo=2, done=2, errors=1, elapsed_s=150.0, eta_s=0.0,
                              last={**row, "status": "error", "error": {"message": "bad weights"}}))
    ui.finish()
    err = capsys.readouterr().err
    assert "resuming: 2 of 5 trials missing (3 finished, kept) on embedded local Ray" in err
    assert "[1/2] m @ x86-64 | calibration_method=minmax: passed (40 s), ETA 60 s" in err
    assert "[2/2] m @ x86-64 | calibration_method=minmax: ERROR bad weights (40 s)\n" in err


def test_trials_are_labelled_as_their_bundles_are_named():
    """pkg.model:create_model was labelled after the package, pkg.model:create after the function."""
    assert plan._label({"model": "mygen.model:create", "target": "t"}, {}) == "mygen @ t"
    assert plan._label({"model": "mygen.model:create_model", "target": "t"}, {}) == "mygen @ t"
    assert plan._label({"model": "mygen.model:create_argmax", "target": "t"}, {}) == "create_argmax @ t"
    assert plan._label({"model": "torchvision:resnet18", "target": "t"}, {"seed": 1}) == "resnet18 @ t | seed=1"
