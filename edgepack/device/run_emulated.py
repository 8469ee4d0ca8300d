"""Run a bundle's own run.py inside an emulated device, with exact instruction counts per inference.

Each model runs in its own folder laid out like a bundle (the device runner, edgepack/bundle/templates/run.py, the
model file, a manifest.json naming it, and any file the task's runner code reads) with
``python3 run.py --batch in.npz --out out.npz`` under ``qemu-aarch64 -cpu <qemu_cpu> -L <rootfs>`` and the
counting plugin. The inputs are a feed, {input name: (N, ...) array}, as the runner takes them for every input
kind; they are split into chunks run as parallel processes (one guest thread each: the runtime at one thread,
OpenBLAS/OpenMP at one thread), so the counts are exact. run.py prints a line after its warm-up run and after every
input; the plugin snapshots its counters at each of those writes, so the difference between two snapshots is one
inference (plus a few thousand instructions of Python loop and print, under 0.01 % for a CNN).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.bundle.report import MODEL_FILES, runner_template
from edgepack.device.emulation import GUEST_PYTHON, Device
from edgepack.errors import StageError
from edgepack.util import ProgressFn

PROCESS_TIMEOUT_S = 3600
Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Job:
    """One model to run on the emulated device: its file and format."""

    name: str          # e.g. "int8"
    fmt: str           # "onnx" or "tflite"
    model: Path


@dataclass
class EmulatedRun:
    """What one model did on the emulated device: outputs in input order, instructions per inference."""

    outputs: list[np.ndarray]             # the first output (every output with all_outputs), stacked over inputs
    per_inference: list[dict[str, int]]   # instruction counts by class, one dict per input
    seconds: float                        # wall time of its slowest process, s

    @property
    def insns(self) -> dict[str, int]:
        """Median instructions per inference, by class (total, dotprod, i8mm, sve, simd_fp, load_store)."""
        return {k: int(np.median([c[k] for c in self.per_inference])) for k in self.per_inference[0]}

    @property
    def spread(self) -> float:
        """(max - min) / median of the total per inference over the inputs: data dependence, not noise."""
        t = [c["total"] for c in self.per_inference]
        return float((max(t) - min(t)) / np.median(t))


@dataclass(frozen=True)
class RunOptions:
    """How to run: guest processes at a time, every output or the first, files beside run.py, progress."""

    processes: int = 2
    all_outputs: bool = False
    runner_files: Sequence[str | Path] = ()
    progress: ProgressFn | None = None


def bundle_folder(job: Job, folder: Path, runner_files: Sequence[str | Path] = ()) -> Path:
    """A bundle-like folder holding run.py, the model, a manifest naming it (one thread) and ``runner_files``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(runner_template(), folder / "run.py")
    for src in runner_files:  # e.g. the detection decoder, as the bundle stage copies it
        shutil.copyfile(src, folder / Path(src).name)
    dst = folder / MODEL_FILES[job.fmt]
    shutil.copyfile(job.model, dst)
    manifest = {"models": [{"format": job.fmt, "file": dst.name}], "runtime": {"threads": 1}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _samples(feed: Feed) -> int:
    return int(next(iter(feed.values())).shape[0])


def run(device: Device, jobs: list[Job], feed: Feed, workdir: Path,
        options: RunOptions = RunOptions()) -> dict[str, EmulatedRun]:
    """Run every job on every sample of ``feed`` ({input name: (N, ...)}, batch 1 per inference) on the emulated
    device. ``options.processes`` guest processes at a time (each one guest thread); the samples are split into
    that many chunks per job. Returns {job name: EmulatedRun}."""
    n = _samples(feed)
    chunks = [c for c in np.array_split(np.arange(n), max(1, min(options.processes, n))) if len(c)]
    tasks = []
    for job in jobs:
        folder = bundle_folder(job, workdir / job.name, options.runner_files)
        for k, idx in enumerate(chunks):
            np.savez(folder / f"in_{k}.npz", **{name: np.ascontiguousarray(a[idx]) for name, a in feed.items()})
            tasks.append((job.name, k, folder))
    done = [0]

    def one(task):
        result = _process(device, task[2], task[1], options.all_outputs)
        done[0] += 1
        if options.progress:
            options.progress(f"running {n} samples on the emulated {device.emulation.name} "
                             f"({device.emulation.qemu_cpu})", done[0], len(tasks))
        return task, result

    with ThreadPoolExecutor(max_workers=max(1, options.processes)) as pool:
        results = list(pool.map(one, tasks))
    out = {}
    for job in jobs:
        parts = [r for _, r in sorted(((t[1], r) for t, r in results if t[0] == job.name), key=lambda p: p[0])]
        outputs = [np.concatenate([p[0][i] for p in parts]) for i in range(len(parts[0][0]))]
        out[job.name] = EmulatedRun(outputs, [c for p in parts for c in p[1]], max(p[2] for p in parts))
    return out


def _process(device: Device, folder: Path, k: int,
             all_outputs: bool) -> tuple[list[np.ndarray], list[dict[str, int]], float]:
    """One guest process over chunk k: (outputs, per-inference counts, seconds)."""
    counts, out = folder / f"counts_{k}.json", folder / f"out_{k}.npz"
    argv = [GUEST_PYTHON, str(folder / "run.py"), "--batch", str(folder / f"in_{k}.npz"), "--out", str(out),
            *(["--all-outputs"] if all_outputs else [])]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(device.command(argv, counts=counts), env=device.environ(), capture_output=True,
                              text=True, timeout=PROCESS_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise StageError(f"the emulated {device.emulation.name} did not finish in {PROCESS_TIMEOUT_S} s") from None
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file() or not counts.is_file():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])[:400]
        raise StageError(f"run.py failed on the emulated {device.emulation.name} ({device.emulation.qemu_cpu}), "
                         f"exit {proc.returncode}: {tail}",
                         hint="the runtime may lack a kernel for this CPU model; rerun with --debug, or --no-emulate")
    with np.load(out) as saved:
        outputs = [saved[f"output{i}"] for i in range(len(saved.files))]
    marks = json.loads(counts.read_text())["marks"]
    if len(marks) != len(outputs[0]) + 1:
        raise StageError(f"the instruction counter saw {len(marks)} marks for {len(outputs[0])} inputs "
                         "(something else wrote to the guest's stdout)")
    per = [{c: marks[i + 1][c] - marks[i][c] for c in marks[i]} for i in range(len(outputs[0]))]
    return outputs, per, seconds
