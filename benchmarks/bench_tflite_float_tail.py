"""The SSDLite shapes detector's full-integer .tflite for android-arm64 with its decoding tail in INT8 (as before)
and in float (edgepack's detect default now: `tflite.convert(float_tail=True)`), each with both spellings of
hard-swish the build chooses between (XNNPACK's and the converter's HARD_SWISH), on the 1,000 test scenes of
benchmarks/bench_task_peers.py (held-out background styles; its calibration split; the same seed).

Every row is the same recipe but for the two switches: `edgepack.backends.tflite.convert` on the same FP32 ONNX
with the same 200 calibration scenes (bias correction on, weights rounded to nearest). mAP drops are FP32 .tflite
minus INT8 .tflite against the labels, with the paired bootstrap interval (benchmarks/bootstrap.py, 200
resamples, seed 0); latency is LiteRT (XNNPACK) at 1 thread, p50 of interleaved runs in one child process.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_tflite_float_tail.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bootstrap  # noqa: E402
from benchmarks.bench_task_peers import setup_ssdlite  # noqa: E402
from benchmarks.common import scratch_dir, tflite_run_footer, update_section  # noqa: E402

ROWS = {  # name: (xnnpack spelling of hard-swish, float tail)
    "INT8 tail, XNNPACK hard-swish": (True, False),
    "INT8 tail, converter HARD_SWISH": (False, False),
    "float tail, XNNPACK hard-swish": (True, True),
    "float tail, converter HARD_SWISH": (False, True),
}
RESAMPLES = 200


def main() -> None:
    from edgepack.backends import tflite
    from edgepack.device import measure

    t0 = time.time()
    with scratch_dir("edgepack-bench-tail-") as work:
        s = setup_ssdlite(work)
        fp32 = tflite.convert(s.fp32, work / "fp32", None)
        paths, wall = {}, {}
        for name, (xnn, tail) in ROWS.items():
            t = time.time()
            paths[name] = tflite.convert(s.fp32, work / name.replace(" ", "_").replace(",", ""), s.calib,
                                         xnnpack_activations=xnn, float_tail=tail)
            wall[name] = time.time() - t
            print(f"{name}: converted in {wall[name]:.0f} s", flush=True)
        ref = tflite.Runner(fp32, threads=2).run_samples(s.val, all_outputs=True)
        quality, drops = {}, {}
        for name, path in paths.items():
            got = tflite.Runner(path, threads=2).run_samples(s.val, all_outputs=True)
            quality[name] = s.task.quality(ref, got, s.truth)
            drops[name] = s.task.resampled(ref, got, s.truth, "map50_drop_points")
            print(f"{name}: mAP@0.5 drop {quality[name]['map50_drop']}", flush=True)
        names = list(ROWS)
        pairs = [(names[2], names[0]), (names[3], names[1])]
        boot = bootstrap.intervals(drops, len(s.val), RESAMPLES, pairs)
        lat = measure.latency({"fp32": ("tflite", fp32), **{n: ("tflite", p) for n, p in paths.items()}},
                              s.val[:1], threads=1, runs=50, workdir=work)
        fp32_ms, fp32_b = lat["fp32"]["p50"], fp32.stat().st_size
        lines = ["| INT8 .tflite | mAP@0.5 drop, points | 95 % interval | mAP@0.5:0.95 drop | outputs | "
                 "size (x FP32) | p50 ms 1 thr (x FP32) | convert s |", "|---|---|---|---|---|---|---|---|"]
        lines.append(f"| FP32 (the metric's value) | {quality[names[0]]['map50_fp32']:.2f} | - | "
                     f"{quality[names[0]]['map_fp32']:.2f} | float32 | {fp32_b / 1e6:.2f} MB | {fp32_ms:.2f} | - |")
        for n, path in paths.items():
            q, (lo, hi) = quality[n], boot["drop"][n]
            io = tflite.io_details(path)["outputs"]
            lines.append(f"| {n} | {q['map50_drop']:.2f} | {lo:.2f} to {hi:.2f} | {q['map_drop']:.2f} | "
                         f"{', '.join(sorted({o['dtype'] for o in io}))} | {path.stat().st_size / 1e6:.2f} MB "
                         f"({path.stat().st_size / fp32_b:.2f}x) | {lat[n]['p50']:.2f} "
                         f"({lat[n]['p50'] / fp32_ms:.2f}x) | {wall[n]:.0f} |")
        diffs = "; ".join(f"{a} minus {b}: {lo:+.2f} to {hi:+.2f} points of mAP@0.5 (the float tail lower in "
                          f"{share:.0%} of resamples)" for (a, b), (lo, hi, share) in boot["diff"].items())
        body = (__doc__.split("\n\n")[0].replace("\n", " ") + "\n\n" + "\n".join(lines) + "\n\n"
                f"Paired differences ({RESAMPLES} resamples of the {len(s.val)} scenes): {diffs}. "
                + tflite_run_footer(time.time() - t0, "bench_tflite_float_tail.py"))
        update_section("tflite-float-tail", "SSDLite to TFLite: the decoding tail in INT8 or in float", body)
        print(body)


if __name__ == "__main__":
    main()
