"""What the task examples' evaluate.py scripts share: running one `edgepack build`, finding the INT8 file it
shipped, summarising its device stage, and rewriting the README's results section."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_build(cmd: list[str], work: Path, target: str) -> dict:
    """Run one build from the repository root (``examples`` importable); {command, wall_s, exit_code}. Its stderr
    goes to ``work``/<target>.log and its --json summary to <target>.json. Exit 1 (a budget missed) still leaves a
    bundle to score; anything else stops the script."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    (work / f"{target}.log").write_text(proc.stderr)
    (work / f"{target}.json").write_text(proc.stdout)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"build for {target} failed (exit {proc.returncode}); see {work / f'{target}.log'}")
    return {"command": cmd, "wall_s": round(wall, 1), "exit_code": proc.returncode}


def int8_file(out: Path) -> Path:
    """The INT8 model file the build in ``out`` shipped, from its manifest."""
    man = json.loads((out / "manifest.json").read_text())
    return next(out / m["file"] for m in man["models"] if m["precision"] == "int8")


def device_summary(val: dict) -> dict | None:
    """What the build's device stage found (None when it did not run): the emulated CPU, instructions per
    inference counted under qemu-user (INT8 / FP32) and the device latency estimate the build chose (p50 ms
    with its band). Each example adds its task metric on the device (``val["device"]["quality_on_device"]``)."""
    dev = val.get("device") or {}
    counts = dev.get("instructions") or {}
    if not counts.get("fp32") or not counts.get("int8"):
        return None
    out = {"qemu_cpu": dev.get("qemu_cpu"), "instructions": {p: counts[p]["total"] for p in ("fp32", "int8")},
           "instruction_ratio": round(counts["int8"]["total"] / counts["fp32"]["total"], 3)}
    est = val["latency_ms"].get("device_emulated") or {}
    if est.get("fp32") and est.get("int8"):
        out["estimate_ms"] = {p: {"p50": round(est[p]["p50"], 1), "band": [round(b, 1) for b in est[p]["band"]]}
                              for p in ("fp32", "int8")}
        how = est["int8"].get("method") or f"instructions x CPI / clock, {est['int8'].get('band_source')}"
        out["estimate_kind"] = f"{est['int8'].get('kind')}: {how}"
        out["estimate_ratio"] = round(est["int8"]["p50"] / est["fp32"]["p50"], 3)
    return out


def write_results(path: Path, mark: str, section: str) -> None:
    """Replace everything after ``mark`` in the README at ``path`` with ``section``."""
    text = path.read_text() if path.is_file() else mark + "\n"
    path.write_text(text.split(mark)[0] + mark + "\n\n" + section)


def ok(flag: bool) -> str:
    return "met" if flag else "**missed**"


def user_command(cmd: list[str], **names: str) -> str:
    """A build command as a user types it: ``edgepack`` for the module form, and each path in ``names`` (then the
    work folder, the parent of --out) replaced by ``$NAME``."""
    text = shlex.join(["edgepack", *cmd[3:]])
    for name, path in {**names, "WORK": str(Path(cmd[cmd.index("--out") + 1]).parent)}.items():
        text = text.replace(path, f"${name}")
    return text


def size_latency_table(results: dict, goals: dict, ms: str = ".2f") -> list[str]:
    """README rows: each build's FP32 and INT8 size and 1-thread p50 with their ratios against ``goals``
    ({"size": ..., "latency": {format: ...}}), and the build's wall time; ``ms`` formats the milliseconds."""
    lines = ["| target (file) | FP32 size | INT8 size | INT8/FP32 | 1-thread p50 FP32 | INT8 | INT8/FP32 | "
             "build wall time |", "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        wall = results["builds"].get(r["target"], {}).get("wall_s")
        goal = goals["latency"][r["format"]]
        lines.append(f"| {r['target']} ({r['format']}) | {r['size_bytes']['fp32']:,} B | {r['size_bytes']['int8']:,} B"
                     f" | {r['size_ratio']:.2f} (goal <= {goals['size']}) {ok(r['size_ratio'] <= goals['size'])} | "
                     f"{r['latency_1t_ms']['fp32']:{ms}} ms | {r['latency_1t_ms']['int8']:{ms}} ms | "
                     f"{r['latency_ratio']:.2f} (goal <= {goal}) {ok(r['latency_ratio'] <= goal)} | "
                     f"{'' if wall is None else f'{wall:.0f} s'} |")
    return lines


def estimate_text(d: dict, ms: str = ".0f") -> str:
    """'; latency estimate FP32 ..., INT8 ..., INT8/FP32 ... (kind)' for a device_summary, '' without one; ``ms``
    formats the milliseconds."""
    if "estimate_ms" not in d:
        return ""
    e = d["estimate_ms"]
    return (f"; latency estimate FP32 {_band(e['fp32'], ms)}, INT8 {_band(e['int8'], ms)}, INT8/FP32 "
            f"{d['estimate_ratio']:.2f} ({d['estimate_kind']})")


def _band(e: dict, ms: str) -> str:
    return f"{e['p50']:{ms}} ms (band {e['band'][0]:{ms}}-{e['band'][1]:{ms}})"
