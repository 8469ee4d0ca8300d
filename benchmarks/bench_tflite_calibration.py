"""Full-integer .tflite files quantized from the ranges TensorFlow's calibrator records against the same ranges
repaired by edgepack (backends/tflite_calibration: a tensor an op overwrote in place is narrowed to the values it
really took), for issue 15's three task models (both hard-swish spellings the build chooses between) and
EfficientNet-Lite0.

Every row is `edgepack.backends.tflite.convert` on the same FP32 ONNX with the same calibration images (bias
correction on, weights rounded to nearest, a detector's decoding tail in float), once as TensorFlow records the
ranges and once repaired. Task models: benchmarks/bench_task_peers.py's data (200 calibration images, the test
split: 300 PP-OCRv4 images, 1,000 scenes for the others), the metric's FP32 -> INT8 drop in points with the paired
bootstrap interval of repaired minus recorded (benchmarks/bootstrap.py). EfficientNet-Lite0: 200 calibration
crops, top-1 agreement with the FP32 .tflite on 500 crops of each held-out set (`make_calibration.py --split
val | fresh | ood`). SQNR: of the first output (a detector's: its class scores). Latency: LiteRT (XNNPACK) at 1
thread, p50 of interleaved runs in one child process, the input already int8 (`Runner.timed`).

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_tflite_calibration.py [--models ppocr ssdlite ...]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bootstrap  # noqa: E402
from benchmarks.bench_task_peers import RESAMPLES, SETUPS  # noqa: E402
from benchmarks.common import efficientnet_lite0, scratch_dir, tflite_run_footer, update_section  # noqa: E402

MODELS = ("ppocr", "ssdlite", "lraspp", "effnet")
SPELLINGS = {"XNNPACK hard-swish": True, "converter HARD_SWISH": False}


def _convert(fp32: Path, out: Path, calib, repaired: bool, **kw) -> tuple[Path, dict | None]:
    from edgepack.backends import tflite, tflite_calibration

    if repaired:
        path = tflite.convert(fp32, out, calib, **kw)
    else:
        real = tflite_calibration.repaired_calibration
        tflite_calibration.repaired_calibration = lambda record=None: contextlib.nullcontext()
        try:
            path = tflite.convert(fp32, out, calib, **kw)
        finally:
            tflite_calibration.repaired_calibration = real
    import json

    prep = out / "int8_prep.json"
    return path, (json.loads(prep.read_text()).get("calibration_ranges") if prep.exists() else None)


def _sqnr(ref, got) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return float(10 * np.log10((ref ** 2).sum() / max(((ref - got) ** 2).sum(), 1e-30)))


def _latency(paths: dict[str, Path], x, work: Path) -> dict[str, float]:
    from edgepack.device import measure

    lat = measure.latency({k: ("tflite", p) for k, p in paths.items()}, x, threads=1, runs=100, workdir=work)
    return {k: v["p50"] for k, v in lat.items()}


def task_model(name: str, work: Path) -> str:
    from edgepack.backends import tflite

    s = SETUPS[name](work)
    tail = name == "ssdlite"
    fp32 = tflite.convert(s.fp32, work / "fp32", None)
    paths, repairs = {}, {}
    for spelling, xnn in SPELLINGS.items():
        for repaired in (False, True):
            key = (spelling, repaired)
            paths[key], repairs[key] = _convert(s.fp32, work / f"{name}_{int(xnn)}{int(repaired)}", s.calib, repaired,
                                                xnnpack_activations=xnn, float_tail=tail, allow_float=True)
            print(f"{name} {spelling} {'repaired' if repaired else 'recorded'}: converted", flush=True)
    ref = tflite.Runner(fp32, threads=2).run_samples(s.val, all_outputs=True)
    metric, title = s.metrics[0]
    budget = {"map50_drop": "map50_drop_points", "miou_drop": "miou_drop_points"}[metric]
    quality, drops, sq = {}, {}, {}
    for key, path in paths.items():
        got = tflite.Runner(path, threads=2).run_samples(s.val, all_outputs=True)
        quality[key] = s.task.quality(ref, got, s.truth)
        drops[key] = s.task.resampled(ref, got, s.truth, budget)
        sq[key] = _sqnr(ref[-1] if tail else ref[0], got[-1] if tail else got[0])
    pairs = [((sp, True), (sp, False)) for sp in SPELLINGS]
    boot = bootstrap.intervals(drops, len(s.val), RESAMPLES[s.task.name], pairs)
    lat = _latency({"fp32": fp32, **{f"{sp}|{r}": p for (sp, r), p in paths.items()}}, s.val[:1], work)
    lines = [f"#### {s.title}", "",
             f"| INT8 .tflite | ranges | {title}, points | 95 % interval | SQNR dB | ranges narrowed (widest) | "
             "p50 ms 1 thr (x FP32) |", "|---|---|---|---|---|---|---|"]
    for sp, r in paths:
        q, (lo, hi), rep = quality[(sp, r)], boot["drop"][(sp, r)], repairs[(sp, r)]
        narrowed = f"{rep['repaired']} of {rep['tensors']} ({rep['widest'][0]['ratio']:.1f}x)" if rep else "-"
        ms = lat[f"{sp}|{r}"]
        lines.append(f"| {sp} | {'repaired' if r else 'as recorded'} | {q[metric]:.2f} | {lo:.2f} to {hi:.2f} | "
                     f"{sq[(sp, r)]:.1f} | {narrowed} | {ms:.2f} ({ms / lat['fp32']:.2f}x) |")
    diffs = "; ".join(f"{a[0]}: repaired minus recorded {lo:+.2f} to {hi:+.2f} points (repaired lower in "
                      f"{share:.0%} of resamples)" for (a, _), (lo, hi, share) in boot["diff"].items())
    fp32_value = quality[pairs[0][0]][metric.replace("_drop", "_fp32")]
    return ("\n".join(lines) + f"\n\nFP32 {title.replace(' drop', '')}: {fp32_value:.2f}; p50 {lat['fp32']:.2f} ms. "
            f"Paired bootstrap ({boot['resamples']} resamples of {len(s.val)} images): {diffs}.")


def effnet(work: Path) -> str:
    from edgepack.backends import tflite
    from edgepack.config import Preprocess
    from edgepack.inputs import data

    calib, val, ood = efficientnet_lite0(work)
    fresh_dir = work / "fresh"
    subprocess.run([sys.executable, str(ROOT / "calibration_data/make_calibration.py"), "--split", "fresh",
                    "--count", "500", "--out", str(fresh_dir)], check=True, stdout=subprocess.DEVNULL)
    pre = Preprocess(resize=256, crop=224, mean=(127.0,) * 3, std=(128.0,) * 3, scale=1.0)
    fresh = data.load(str(fresh_dir), input_shape=(1, 3, 224, 224), preprocess=pre, count=None, seed=1,
                      role="validation").x
    fp32 = tflite.convert(work / "fp32.onnx", work / "fp32", None)
    paths, repairs = {}, {}
    for repaired in (False, True):
        paths[repaired], repairs[repaired] = _convert(work / "fp32.onnx", work / f"effnet_{int(repaired)}", calib,
                                                      repaired)
    sets = {"old held-out (val)": val, "fresh (OpenCV photos)": fresh, "out-of-domain (ood)": ood}
    cells = {r: [] for r in paths}
    for x in sets.values():
        ref = tflite.Runner(fp32, threads=2).run_samples(x)
        for r, p in paths.items():
            got = tflite.Runner(p, threads=2).run_samples(x)
            agree = float((ref.reshape(len(x), -1).argmax(1) == got.reshape(len(x), -1).argmax(1)).mean())
            cells[r].append(f"{agree:.3f} / {_sqnr(ref, got):.1f}")
    lat = _latency({"fp32": fp32, "False": paths[False], "True": paths[True]}, val[:1], work)
    lines = ["#### EfficientNet-Lite0 (pretrained, 224 px), android-arm64", "",
             "| ranges | " + " | ".join(f"{k}: agreement / SQNR dB" for k in sets) + " | ranges narrowed (widest) | "
             "p50 ms 1 thr (x FP32) |", "|---|---|---|---|---|---|"]
    for r in paths:
        rep = repairs[r]
        narrowed = f"{rep['repaired']} of {rep['tensors']} ({rep['widest'][0]['ratio']:.1f}x)" if rep else "-"
        lines.append(f"| {'repaired' if r else 'as recorded'} | " + " | ".join(cells[r]) +
                     f" | {narrowed} | {lat[str(r)]:.2f} ({lat[str(r)] / lat['fp32']:.2f}x) |")
    return "\n".join(lines) + f"\n\nFP32 p50 {lat['fp32']:.2f} ms."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = ap.parse_args()
    t0 = time.time()
    blocks = []
    for name in args.models:
        with scratch_dir(f"edgepack-bench-calib-{name}-") as work:
            blocks.append(effnet(work) if name == "effnet" else task_model(name, work))
            print(blocks[-1], flush=True)
    body = (__doc__.split("\n\n")[0].replace("\n", " ") + "\n\n" + __doc__.split("\n\n")[1].replace("\n", " ")
            + "\n\n" + "\n\n".join(blocks) + "\n\n"
            + tflite_run_footer(time.time() - t0, "bench_tflite_calibration.py"))
    update_section("tflite-calibration", "TFLite INT8: the calibrator's recorded ranges against repaired ones", body)
    print(body)


if __name__ == "__main__":
    main()
