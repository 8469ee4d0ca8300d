"""Peak resident memory of the EfficientNet-Lite0 build, accuracy search included, at 200 and 1,000
calibration samples (issue 14's goals: <= 2 GB at 200, and no more than 1.2x that at 1,000).

Each build is `edgepack build --config examples/efficientnet_lite0/edgepack.toml --calib CALIB --calib-samples N
--val <200 held-out crops> --min-agreement 1.0 --max-search-time 300 --latency-runs 5 --no-emulate --json`: an
agreement of 1.0 cannot be met, so the accuracy-aware search runs to its time limit. Memory is measured two
ways: `/usr/bin/time -v` (the largest single process: the build or one of its runtime children) and a sampler
that sums the RSS of the whole process tree every 0.5 s. N = 200: the shipped calibration crops; N = 1,000:
`make_calibration.py --split calib --count 1000 --seed 1` (the same 11 source photos, more crops).

    .venv/bin/python benchmarks/bench_memory.py [--samples 200,1000] [--search-time 300] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import natural_photos, scratch_dir, update_section  # noqa: E402


def tree_peak(proc: subprocess.Popen, every: float = 0.5) -> dict:
    """Start a thread summing the RSS of ``proc`` and its descendants; the dict gets "peak_gb" when it ends."""
    out = {"peak_gb": 0.0}

    def sample():
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            out["peak_gb"] = max(out["peak_gb"], total / 1e9)
            time.sleep(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out["thread"] = thread
    return out


def build(calib: Path, samples: int, val: Path, out: Path, search_time: int) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "edgepack.cli", "build",
           "--config", str(ROOT / "examples/efficientnet_lite0/edgepack.toml"), "--calib", str(calib),
           "--calib-samples", str(samples), "--val", str(val), "--min-agreement", "1.0",
           "--max-search-time", str(search_time), "--latency-runs", "5", "--no-emulate", "--out", str(out),
           "--json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    sampler = tree_peak(proc)
    stdout, stderr = proc.communicate()
    sampler["thread"].join()
    wall = time.perf_counter() - t0
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    largest = int(match.group(1)) * 1024 / 1e9 if match else float("nan")
    man = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    search = man.get("stages", {}).get("quantization_search") or {}
    trials = search.get("trials", [])
    done = [t for t in trials[1:] if not t.get("stopped")]
    return {"samples": samples, "rc": proc.returncode, "largest_gb": largest, "tree_gb": sampler["peak_gb"],
            "wall_s": wall, "tried": len(done), "stopped": [t["name"] for t in trials if t.get("stopped")],
            "search_s": search.get("seconds"), "trials": trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default="200,1000")
    parser.add_argument("--search-time", type=int, default=300)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    counts = [int(s) for s in args.samples.split(",")]
    with scratch_dir("edgepack-bench-memory-") as work:
        val_all = natural_photos(500)
        val = work / "val"
        val.mkdir()
        for f in sorted(val_all.iterdir())[:200]:
            (val / f.name).symlink_to(f)
        rows = []
        for n in counts:
            calib = ROOT / "calibration_data/images"
            if n > 200:
                calib = work / f"calib_{n}"
                subprocess.run([sys.executable, str(ROOT / "calibration_data/make_calibration.py"), "--split",
                                "calib", "--count", str(n), "--seed", "1", "--out", str(calib)], check=True,
                               stdout=subprocess.DEVNULL)
            r = build(calib, n, val, work / f"out_{n}", args.search_time)
            print(json.dumps({k: v for k, v in r.items() if k != "trials"}), flush=True)
            rows.append(r)
    base = rows[0]["largest_gb"]
    lines = ["| calibration samples | exit | peak RSS, largest process | peak RSS, process tree | search: trials "
             "finished / stopped at the limit, seconds | whole build s |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f" ({r['largest_gb'] / base:.2f}x)" if r is not rows[0] else ""
        stopped = f" + {len(r['stopped'])} stopped ({', '.join(r['stopped'])})" if r["stopped"] else ""
        lines.append(f"| {r['samples']} | {r['rc']} | {r['largest_gb']:.2f} GB{ratio} | {r['tree_gb']:.2f} GB | "
                     f"{r['tried']}{stopped} in {r['search_s']} s | {r['wall_s']:.0f} |")
    trial_lines = ["", "Trials of the first run (agreement on the 200 crops / SQNR / seconds):", ""]
    trial_lines += [f"- {t['name']}: {t.get('agreement')} / {t.get('sqnr_db')} dB / {t['seconds']} s"
                    + (" (stopped at the time limit)" if t.get("stopped") else "") for t in rows[0]["trials"]]
    table = "\n".join(lines + trial_lines)
    print(table)
    if not args.no_write:
        update_section("memory", "EfficientNet-Lite0: peak memory with the accuracy search (bench_memory.py)",
                       __doc__.split("\n\n")[1].strip() + "\n\n" + table)


if __name__ == "__main__":
    main()
