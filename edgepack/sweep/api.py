"""`edgepack.sweep(SWEEP.toml, out=DIR)`: plan the trials, build the missing ones on Ray, write the results.

The library never prints: it reports through ``progress(SweepProgress)``; the CLI draws counts and an ETA.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import Interrupted, OutputError
from edgepack.sweep import plan, results, runner, store
from edgepack.sweep import spec as spec_mod
from edgepack.sweep.plan import Trial
from edgepack.util import write_bytes_atomic


@dataclass
class SweepProgress:
    """Where a sweep stands: trial counts, the last trial that finished and the estimated time left (s)."""

    total: int                 # trials in the sweep
    todo: int                  # trials this run builds (missing ones with --resume)
    done: int = 0              # of todo, finished (built or failed)
    errors: int = 0            # of done, failed to build
    elapsed_s: float = 0.0
    eta_s: float | None = None
    last: dict[str, Any] | None = None   # the row of the trial that just finished
    cluster: str = ""


@dataclass
class SweepResult:
    out: Path
    total: int
    ran: int
    kept: int
    errors: int
    seconds: float
    document: dict = field(repr=False)

    @property
    def json_path(self) -> Path:
        return self.out / "sweep.json"

    @property
    def html_path(self) -> Path:
        return self.out / "sweep.html"


@dataclass(frozen=True)
class RunOptions:
    """How to run a sweep: what to (re)build and on which Ray."""

    resume: bool = False          # build only trials without a finished result in OUT
    force: bool = False           # forget earlier trials in OUT and build all
    retry_failed: bool = False    # with resume: also rebuild trials that failed
    address: str | None = None    # join this Ray cluster; None: embedded local Ray
    num_cpus: int | None = None   # embedded Ray's CPUs (default: all cores)


def preview(sweep_file: str | Path, out: str | Path,
            options: RunOptions | None = None) -> tuple[list[Trial], list[Trial]]:
    """(every trial, the trials a run with ``options`` would build) without building anything (--dry-run)."""
    options = options or RunOptions()
    trials = plan.expand(spec_mod.load(sweep_file))
    finished = {} if options.force else store.finished(Path(out))
    return trials, _todo(trials, finished, options)


def _todo(trials: list[Trial], finished: dict[str, dict], options: RunOptions) -> list[Trial]:
    return [t for t in trials if t.key not in finished
            or (options.retry_failed and finished[t.key].get("status") == "error")]


def run(sweep_file: str | Path, out: str | Path, options: RunOptions | None = None,
        progress: Callable[[SweepProgress], None] | None = None, **kwargs: Any) -> SweepResult:
    """Run the sweep in ``sweep_file`` into ``out``. Options as a RunOptions or keywords (resume=True, ...)."""
    options = options or RunOptions(**kwargs)
    sweep = spec_mod.load(sweep_file)
    trials = plan.expand(sweep)
    out = Path(out)
    _prepare(out, trials, options, sweep)
    todo = _todo(trials, store.finished(out), options)
    state = SweepProgress(total=len(trials), todo=len(todo))
    report = progress or (lambda p: None)
    t0, cluster, doc = time.perf_counter(), "nothing to build", None
    try:
        if todo:
            with runner.session(options.address, options.num_cpus) as c:
                cluster = state.cluster = c.description
                report(state)
                runner.execute(todo, sweep.options, c, on_result=lambda t, r: _finish(out, t, r, state, t0, report),
                               on_tick=None)
            if not c.embedded:
                runner.reap_local_staging()
        else:
            report(state)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {len(trials) - len(todo) + state.done} finished trial(s) are kept in "
                          f"{out}/trials; {len(todo) - state.done} are missing",
                          hint="run the same command with --resume to build only the missing trials") from None
    finally:
        store.clear_staging(out)
        with contextlib.suppress(OSError):
            doc = _write_results(out, sweep, trials, {"ran": state.done, "seconds": round(time.perf_counter() - t0, 1),
                                                      "cluster": cluster, "resumed": options.resume})
    if doc is None:
        raise OutputError(f"cannot write {out}/sweep.json", hint="check the folder is writable and the disk has space")
    return SweepResult(out=out, total=len(trials), ran=state.done, kept=len(trials) - len(todo),
                       errors=doc["counts"]["error"], seconds=round(time.perf_counter() - t0, 1), document=doc)


def _prepare(out: Path, trials: list[Trial], options: RunOptions, sweep: spec_mod.Sweep) -> None:
    """Refuse to mix with an earlier sweep unless asked (--resume / --force); write OUT/sweep.toml."""
    earlier = store.finished(out)
    if earlier and not (options.resume or options.force):
        ours = sum(t.key in earlier for t in trials)
        raise OutputError(f"{out} already holds {len(earlier)} finished trial(s) ({ours} of this sweep)",
                          hint="pass --resume to build only the missing trials, --force to start over, "
                               "or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        store.clear_staging(out)
        if options.force:
            store.remove_trials(out)
        write_bytes_atomic(out / "sweep.toml", sweep.text.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write to {out}: {exc.strerror or exc}",
                          hint="choose an --out in a writable folder") from None


def _finish(out: Path, trial: Trial, result: dict, state: SweepProgress, t0: float,
            report: Callable[[SweepProgress], None]) -> None:
    """Write one finished trial (atomically) and report progress."""
    manifest = _manifest(result["zip"]) if result.get("zip") else None
    row = results.row(trial, result["record"], manifest)
    store.write_trial(out, trial.key, row, result.get("zip"))
    state.done += 1
    state.errors += row["status"] == "error"
    state.elapsed_s = time.perf_counter() - t0
    state.eta_s = state.elapsed_s / state.done * (state.todo - state.done)
    state.last = row
    report(state)


def _manifest(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return json.loads(zf.read(f"{store.BUNDLE}/manifest.json"))


def _write_results(out: Path, sweep: spec_mod.Sweep, trials: list[Trial], run_info: dict) -> dict:
    """sweep.json + sweep.html over every finished trial of this sweep (earlier runs included)."""
    finished = store.finished(out)
    rows = [finished[t.key] for t in trials if t.key in finished]
    targets = list(dict.fromkeys(t.target for t in trials))
    doc = results.document(sweep.options.name, sweep.source, rows, targets,
                           {**run_info, "planned": len(trials), "missing": len(trials) - len(rows),
                            "not_in_this_sweep": len(set(finished) - {t.key for t in trials})})
    results.write(out, doc)
    return doc
