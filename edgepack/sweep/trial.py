"""One trial, inside a Ray worker: an ordinary `edgepack.api.build` into a private staging folder.

The worker returns the bundle as its deterministic zip (through Ray's object store) with a small record
(status, error, node, timing mode); the driver alone writes under the sweep's output folder, so workers need
no shared file system for results. A build that fails on its own (EdgepackError, or any Python exception) is
returned as an error record, not raised: Ray retries only when the worker or its node dies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

STAGING_DIR = "edgepack-sweep-trials"


def run_trial(key: str, name: str, settings: dict, max_timing_wait_s: float | None,
              staging_root: str | None) -> dict[str, Any]:
    """Build one trial; return {"record": {...}, "zip": bytes | None}. Runs in a Ray task. With
    ``max_timing_wait_s`` (exclusive timing), latency is timed in the machine's exclusive window (gate.py)."""
    import ray

    from edgepack import api
    from edgepack import config as config_mod
    from edgepack.errors import EdgepackError
    from edgepack.sweep.gate import FileGate, gated_latency

    node = ray.get_runtime_context().get_node_id()
    record: dict[str, Any] = {"node": node, "host": socket.gethostname()}
    # the machine's gate, in the machine's temp folder: made before the trial's own temp folder takes over
    gate = FileGate(max_wait_s=max_timing_wait_s) if max_timing_wait_s is not None else None
    work = _fresh_workdir(Path(staging_root) if staging_root else Path(tempfile.gettempdir()) / STAGING_DIR, key)
    old_tempdir, t0, payload = tempfile.tempdir, time.perf_counter(), None
    tempfile.tempdir = str(work / "tmp")  # the build's own temp folders die with this trial's folder
    try:
        config = config_mod.from_mapping({**settings, "out": str(work / "bundle"), "force": True}, where=name)
        with gated_latency(gate, key, record), contextlib.redirect_stdout(sys.stderr):
            result = api.build(config)
        payload = result.zip.read_bytes()
        record["status"] = "passed" if result.passed else "budget-missed"
    except EdgepackError as exc:
        record.update(status="error", error={"type": type(exc).__name__, "message": exc.message, "hint": exc.hint,
                                             "exit_code": exc.exit_code})
    except Exception as exc:  # a crash inside the build: recorded, and the other trials go on
        record.update(status="error", error={"type": type(exc).__name__, "message": str(exc)[:500],
                                             "traceback": traceback.format_exc()[-2000:]})
    finally:
        tempfile.tempdir = old_tempdir
        shutil.rmtree(work, ignore_errors=True)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return {"record": record, "zip": payload}


def _fresh_workdir(root: Path, key: str) -> Path:
    """root/<pid>-<key>/ with a tmp/ inside; folders left by workers that died (killed mid-build) are removed."""
    root.mkdir(parents=True, exist_ok=True)
    reap(root)
    work = root / f"{os.getpid()}-{key[:16]}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "tmp").mkdir(parents=True)
    return work


def reap(root: Path) -> int:
    """Remove trial folders under ``root`` whose worker process no longer exists; return how many."""
    from edgepack.sweep.gate import pid_alive

    removed = 0
    for d in root.iterdir() if root.is_dir() else []:
        pid = d.name.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed
