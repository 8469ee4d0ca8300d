"""Learned weight rounding (GPTQ, edgepack.backends.rounding) against round-to-nearest, same recipe otherwise.

Rows:
  effnet-onnx    EfficientNet-Lite0, quantize_onnx for raspberry-pi-4 (8-bit weights, reference arithmetic), 200
                 calibration crops; top-1 agreement and logits SQNR against FP32 on the 500 held-out crops (`val`)
                 and on 500 crops of the OpenCV sample photos no setting was tuned on (`fresh`, needs
                 scripts/opencv-samples.sh).
  effnet-tflite  the same, full-integer .tflite for android-arm64 (tflite.convert, bias correction, LiteRT).
  weights-only   EfficientNet-Lite0 with only the weights rounded (activations float), after bias correction:
                 what the rounding itself changes.
  lraspp, ssdlite  the task models of benchmarks/bench_task_peers.py, quantize_onnx for raspberry-pi-4, scored on
                 their 1,000-scene test splits (mIoU / mAP@0.5 drop, points).

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_weight_rounding.py [--rows effnet-onnx,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import efficientnet_lite0, natural_photos, scratch_dir, update_section  # noqa: E402

ROWS = ("effnet-onnx", "effnet-tflite", "weights-only", "lraspp", "ssdlite")
ROUNDINGS = ("nearest", "gptq")


def _agreement(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    ref, got = np.asarray(ref, np.float32).reshape(len(ref), -1), np.asarray(got, np.float32).reshape(len(got), -1)
    sqnr = 10 * np.log10((ref ** 2).sum() / max(((ref - got) ** 2).sum(), 1e-30))
    return float((ref.argmax(1) == got.argmax(1)).mean()), float(sqnr)


def _onnx_outputs(path: Path, x: np.ndarray, arithmetic: str = "reference") -> np.ndarray:
    from edgepack.backends import onnx as onnx_backend

    return onnx_backend.Runner(path, threads=2, arithmetic=arithmetic).run_samples(x)


def effnet_sets(work: Path) -> dict:
    from edgepack.config import Preprocess
    from edgepack.inputs import data

    calib, val, _ = efficientnet_lite0(work)
    pre = Preprocess(resize=256, crop=224, mean=(127.0,) * 3, std=(128.0,) * 3, scale=1.0)
    fresh = data.load(str(natural_photos(500, "fresh")), input_shape=(1, 3, 224, 224), preprocess=pre, count=None,
                      seed=1, role="validation").x
    return {"calib": calib, "sets": {"val": val, "fresh": fresh}}


def row_effnet_onnx(work: Path, e: dict) -> list[str]:
    from edgepack.backends.onnx_quantize import quantize_onnx

    cells = {}
    for wr in ROUNDINGS:
        t0 = time.perf_counter()
        rec = quantize_onnx(work / "fp32.onnx", work / f"int8_{wr}.onnx", e["calib"], target_arch="aarch64",
                            weight_rounding=wr)
        secs = time.perf_counter() - t0
        cells[wr] = [_agreement(_onnx_outputs(work / "fp32.onnx", x), _onnx_outputs(work / f"int8_{wr}.onnx", x))
                     for x in e["sets"].values()], secs, rec["weight_rounding"]
    return _effnet_line("EfficientNet-Lite0, raspberry-pi-4 ONNX", cells)


def row_effnet_tflite(work: Path, e: dict) -> list[str]:
    from edgepack.backends import tflite
    from edgepack.device import measure

    wd = work / "tflite"
    fp32 = tflite.convert(work / "fp32.onnx", wd, None)
    cells = {}
    for wr in ROUNDINGS:
        t0 = time.perf_counter()
        int8 = tflite.convert(work / "fp32.onnx", wd / wr, e["calib"], weight_rounding=wr)
        secs = time.perf_counter() - t0
        got = []
        for x in e["sets"].values():
            ref = measure.outputs("tflite", fp32, x, threads=2, workdir=wd, what="FP32 .tflite")
            q = measure.outputs("tflite", int8, x, threads=2, workdir=wd, what="INT8 .tflite")
            got.append(_agreement(ref, q))
        cells[wr] = got, secs, {}
    return _effnet_line("EfficientNet-Lite0, android-arm64 TFLite", cells)


def row_weights_only(work: Path, e: dict) -> list[str]:
    """Weights rounded (nearest or learned) and bias-corrected, activations float: tflite_prep.bias_correct writes
    the learned weights into its copy; round-to-nearest is applied to the corrected copy here."""
    import onnx
    from onnx import numpy_helper

    from edgepack.backends import rounding, tflite_prep

    cells = {}
    for wr in ROUNDINGS:
        t0 = time.perf_counter()
        learned = rounding.gptq_weights(onnx.load(str(work / "fp32.onnx")), e["calib"])[0] if wr == "gptq" else None
        out = work / f"weights_{wr}.onnx"
        tflite_prep.bias_correct(work / "fp32.onnx", out, e["calib"], rounded=learned)
        model = onnx.load(str(out))
        targets = {t.node.input[1]: t for t in tflite_prep._targets(model)}
        for init in model.graph.initializer:
            if init.name in targets and (learned is None or init.name not in learned):
                t = targets[init.name]
                init.CopyFrom(numpy_helper.from_array((t.weight + t.eps).astype(np.float32), init.name))
        onnx.save(model, str(out))
        secs = time.perf_counter() - t0
        cells[wr] = [_agreement(_onnx_outputs(work / "fp32.onnx", x), _onnx_outputs(out, x))
                     for x in e["sets"].values()], secs, {}
    return _effnet_line("EfficientNet-Lite0, weights only (activations float), bias-corrected", cells)


def _effnet_line(title: str, cells: dict) -> list[str]:
    def fmt(k):
        (a_val, s_val), (a_fresh, s_fresh) = cells[k][0]
        return f"{s_val:.1f} / {a_val:.3f}", f"{s_fresh:.1f} / {a_fresh:.3f}"

    n, g = fmt("nearest"), fmt("gptq")
    learned = cells["gptq"][2]
    extra = (f"{learned.get('learned_layers')} of {learned.get('layers')} layers, output error "
             f"{learned.get('output_error_vs_nearest')}x; " if learned else "")
    return [f"| {title} | {n[0]} -> {g[0]} | {n[1]} -> {g[1]} | {extra}{cells['nearest'][1]:.0f} s -> "
            f"{cells['gptq'][1]:.0f} s |"]


def row_task(name: str, work: Path) -> list[str]:
    import benchmarks.bench_task_peers as peers
    from edgepack.backends.onnx_quantize import quantize_onnx

    s = getattr(peers, f"setup_{name}")(work)
    all_outputs = getattr(s.task, "all_outputs", False)
    ref = peers.outputs(s.fp32, s.val, "reference", all_outputs)
    key, title = s.metrics[0]
    cells = {}
    for wr in ROUNDINGS:
        t0 = time.perf_counter()
        quantize_onnx(s.fp32, work / f"int8_{wr}.onnx", s.calib, target_arch="aarch64", weight_rounding=wr)
        secs = time.perf_counter() - t0
        q = s.task.quality(ref, peers.outputs(work / f"int8_{wr}.onnx", s.val, "reference", all_outputs), s.truth)
        cells[wr] = q, secs
    n, g = cells["nearest"][0], cells["gptq"][0]
    return [f"| {s.title}, raspberry-pi-4 ONNX, {title} on {len(s.val)} test images (SQNR dB) | "
            f"{n[key]:.2f} ({n['sqnr_db']:.1f}) -> {g[key]:.2f} ({g['sqnr_db']:.1f}) | | "
            f"{cells['nearest'][1]:.0f} s -> {cells['gptq'][1]:.0f} s |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    lines = ["| model | old held-out set: SQNR dB / agreement, nearest -> learned | fresh set: same | "
             "learned layers; quantize time |", "|---|---|---|---|"]
    with scratch_dir("ep-rounding-") as work:
        effnet = effnet_sets(work) if any(r.startswith(("effnet", "weights")) for r in rows) else None
        for r in rows:
            t0 = time.perf_counter()
            if r == "effnet-onnx":
                lines += row_effnet_onnx(work, effnet)
            elif r == "effnet-tflite":
                lines += row_effnet_tflite(work, effnet)
            elif r == "weights-only":
                lines += row_weights_only(work, effnet)
            else:
                (work / r).mkdir()
                lines += row_task(r, work / r)
            print(lines[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    body = ("\n".join(lines) + "\n\nTask rows: the metric's drop FP32 -> INT8 in points, nearest -> learned. "
            "Reproduce: `PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_weight_rounding.py`.")
    print(body)
    if not args.no_write:
        update_section("weight-rounding", "Learned weight rounding (GPTQ) against round-to-nearest", body)


if __name__ == "__main__":
    main()
