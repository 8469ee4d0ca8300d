"""Host latency and peak memory, measured in a clean child process.

Latency: one child loads every model being compared, warms each up, then times them interleaved
(A, B, A, B, ...) so that noise on this shared machine hits all of them alike; p50/p90 in ms.
Peak memory: one child per model loads it and runs one inference; the child's peak RSS (MB)
minus its RSS before loading the model is the model's cost.
Outputs: one child runs a model on every sample and saves its outputs, for models that may crash the process
(LiteRT aborts on some full-integer BERTs): the build survives and can say why.

    python -m edgepack.device.measure latency --input x.npy --threads 1 --runs 50 onnx:a.onnx onnx:b.onnx

The input is one array (.npy) or, for models with several inputs (text), an .npz holding each by name.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

WARMUP_RUNS = 5


def _runner(spec: str, threads: int, arithmetic: str | None = None):
    """``arithmetic``: None follows the model (outputs as validation computes them); latency and memory ask for
    "native": this host's own kernels, what runs here, not the reference arithmetic (edgepack.backends.onnx)."""
    fmt, _, path = spec.partition(":")
    from edgepack import backends

    return backends.get(fmt).Runner(Path(path), threads=threads, arithmetic=arithmetic)


def _rss_mb() -> float:
    """Peak RSS of this process, MB. VmHWM, because ru_maxrss survives exec and would report the
    parent's (torch-sized) peak in a freshly started child."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _save_input(x: np.ndarray | dict[str, np.ndarray], workdir: Path) -> Path:
    """One array -> .npy; several named inputs -> .npz (read back by _load_input)."""
    if isinstance(x, dict):
        path = workdir / "latency_input.npz"
        np.savez(path, **x)
    else:
        path = workdir / "latency_input.npy"
        np.save(path, x)
    return path


def _load_input(path: str) -> np.ndarray | dict[str, np.ndarray]:
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    return np.load(path, allow_pickle=False)


def _latency(specs: list[str], x, threads: int, runs: int) -> dict:
    # each model's input converted to its own layout and dtype once: the timing is the model's, not the
    # float32 -> int8 / NCHW -> NHWC conversions validation needs (an app feeds the model its own dtype)
    calls = [_runner(s, threads, "native").timed(x) for s in specs]
    for call in calls:
        for _ in range(WARMUP_RUNS):
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            call()
            times[i].append((time.perf_counter() - t0) * 1000.0)
    return {s: summarize(t) for s, t in zip(specs, times, strict=True)}


def summarize(times_ms: list[float]) -> dict:
    arr = np.asarray(times_ms)
    return {"p50": round(float(np.percentile(arr, 50)), 4), "p90": round(float(np.percentile(arr, 90)), 4),
            "mean": round(float(arr.mean()), 4), "runs": len(times_ms)}


def _memory(spec: str, x, threads: int) -> dict:
    before = _rss_mb()
    _runner(spec, threads, "native").run(x)
    peak = _rss_mb()
    return {"peak_rss_mb": round(peak, 1), "model_rss_mb": round(peak - before, 1)}


def _child(args: list[str], what: str = "latency measurement") -> dict:
    """Run this module's CLI in a child (edgepack.isolate: a crash becomes a StageError naming ``what``)."""
    from edgepack import isolate

    stdout = isolate.run_child([sys.executable, "-m", "edgepack.device.measure", *args], step=what)
    return json.loads(stdout.strip().splitlines()[-1])


def latency(models: dict[str, tuple[str, Path]], x, *, threads: int, runs: int, workdir: Path) -> dict:
    """{key: {p50, p90, mean, runs}} in ms for models {key: (format, path)}, interleaved in one child.
    ``x``: one sample, an array or {input name: array}."""
    inp = _save_input(x, workdir)
    specs = {key: f"{fmt}:{path}" for key, (fmt, path) in models.items()}
    result = _child(["latency", "--input", str(inp), "--threads", str(threads), "--runs", str(runs),
                     *specs.values()])
    return {key: result[spec] for key, spec in specs.items()}


def memory(fmt: str, path: Path, x, *, threads: int, workdir: Path) -> dict:
    inp = _save_input(x, workdir)
    return _child(["memory", "--input", str(inp), "--threads", str(threads), f"{fmt}:{path}"])


def outputs(fmt: str, path: Path, x, *, threads: int, workdir: Path, what: str | None = None,
            all_outputs: bool = False) -> np.ndarray | list[np.ndarray]:
    """First output of the model on every sample of ``x`` (batch 1), computed in a child process (every
    output, in a list, with ``all_outputs``). A crash in the runtime becomes a StageError "<what> failed: ..."
    naming the signal."""
    inp, out = _save_input(x, workdir), workdir / ("child_outputs.npz" if all_outputs else "child_outputs.npy")
    _child(["outputs", "--input", str(inp), "--threads", str(threads), "--out", str(out), f"{fmt}:{path}",
            *(["--all-outputs"] if all_outputs else [])], what=what or f"running {Path(path).name}")
    if all_outputs:
        with np.load(out, allow_pickle=False) as npz:
            return [npz[f"out{i}"] for i in range(len(npz.files))]
    return np.load(out, allow_pickle=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["latency", "memory", "outputs"])
    parser.add_argument("--out", help="outputs mode: the .npy to write")
    parser.add_argument("--input", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--all-outputs", action="store_true", help="outputs mode: every output, in an .npz")
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    from edgepack import isolate

    isolate.die_with_parent()
    isolate.test_abort(args.mode)
    x = _load_input(args.input)
    if args.mode == "latency":
        out = _latency(args.models, x, args.threads, args.runs)
    elif args.mode == "outputs":
        if args.all_outputs:
            found = _runner(args.models[0], args.threads).run_samples(x, all_outputs=True)
            np.savez(args.out, **{f"out{i}": o for i, o in enumerate(found)})
        else:
            np.save(args.out, _runner(args.models[0], args.threads).run_samples(x))
        out = {"saved": args.out}
    else:
        out = _memory(args.models[0], x, args.threads)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
