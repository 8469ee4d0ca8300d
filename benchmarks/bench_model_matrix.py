"""Model matrix: seven classifiers, each built to a full-integer .tflite (android-arm64) and an INT8 .onnx
(raspberry-pi-4) by the `edgepack build` command line, each validated.

torchvision resnet18, resnet50, mobilenet_v2, mobilenet_v3_large, efficientnet_b0 and shufflenet_v2_x1_0
have random weights (no pretrained weights offline; 1000 classes, ImageNet preprocessing), given to the build as
`--weights`: torchvision's seeded initialisation, then BatchNorm statistics re-estimated on 64 calibration
photos. Without that step torchvision's fresh BatchNorm (mean 0, variance 1) lets the signal die out in the
MobileNets: random mobilenet_v2's logits are ~1e-9, below what any INT8 model can represent (the first run of
this table gave 0 % agreement there), a property of the untrained weights, not of quantization. EfficientNet-Lite0
is the pretrained example model with its own preprocessing. Every build: the shipped calibration photos
(calibration_data/images, a seeded subset), held-out natural-photo crops as validation (make_calibration.py
--split val), the accuracy-aware search off (--max-search-time 0: the table shows the default recipe). Each
build is a fresh `nice -n 10` process; wall time includes imports, export, conversion and validation.

Columns: "built" = the bundle was written and validated (exit 0, or exit 1 = a budget such as size missed,
named in "missed"); agreement = top-1 of INT8 equals top-1 of FP32 in the same format on the validation crops;
size = INT8 file / FP32 file; latency = INT8 p50 / FP32 p50 at one thread, measured by the build on this host
(LiteRT with XNNPACK, or onnxruntime CPU). Random-weight models give near-tied logits, so their agreement is a
harder test than a trained model's; SQNR (dB, INT8 vs FP32 logits) is shown beside it.

    .venv/bin/python benchmarks/bench_model_matrix.py [--size 224] [--calib-samples 64] [--val-samples 100]
        [--models resnet18,resnet50] [--formats tflite,onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import natural_photos, scratch_dir, update_section  # noqa: E402

LITE0_PRE = ["--mean", "127,127,127", "--std", "128,128,128", "--scale", "1"]
MODELS = {
    "resnet18": ("torchvision:resnet18", []),
    "resnet50": ("torchvision:resnet50", []),
    "mobilenet_v2": ("torchvision:mobilenet_v2", []),
    "mobilenet_v3_large": ("torchvision:mobilenet_v3_large", []),
    "efficientnet_b0": ("torchvision:efficientnet_b0", []),
    "shufflenet_v2_x1_0": ("torchvision:shufflenet_v2_x1_0", []),
    "efficientnet_lite0": ("examples.efficientnet_lite0.model:create_model", LITE0_PRE),
}
TARGETS = {"tflite": "android-arm64", "onnx": "raspberry-pi-4"}


def random_weights(model: str, size: int, work: Path) -> Path:
    """State dict of a seeded random torchvision ``model`` whose BatchNorm statistics were re-estimated on 64
    calibration photos (ImageNet preprocessing at ``size`` px), so that activations have trained-like scales."""
    import torch
    import torchvision

    from edgepack.config import Preprocess
    from edgepack.inputs import data

    path = work / f"{model}_random_bn.pt"
    torch.manual_seed(0)
    net = getattr(torchvision.models, model)()
    x = data.load(str(ROOT / "calibration_data/images"), input_shape=(1, 3, size, size),
                  preprocess=Preprocess(resize=round(size * 256 / 224), crop=size), count=64, seed=1,
                  role="calibration").x
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
    net.train()
    with torch.no_grad():
        for i in range(0, len(x), 16):
            net(torch.from_numpy(x[i:i + 16]))
    torch.save(net.eval().state_dict(), path)
    return path


def build(model: str, fmt: str, args, val: Path, work: Path) -> dict:
    """One `edgepack build` in a fresh process; the row for the table (never raises)."""
    source, extra = MODELS[model]
    out = work / f"{model}-{fmt}"
    size = args.size
    if source.startswith("torchvision:"):
        weights = work / f"{model}_random_bn.pt"
        extra = [*extra, "--weights", str(weights if weights.is_file() else random_weights(model, size, work))]
    cmd = [sys.executable, "-m", "edgepack.cli", "build", source, "--target", TARGETS[fmt],
           "--calib", str(ROOT / "calibration_data/images"), "--calib-samples", str(args.calib_samples),
           "--val", str(val), "--val-samples", str(args.val_samples), "--input-shape", f"1,3,{size},{size}",
           "--resize", str(round(size * 256 / 224)), "--crop", str(size), "--latency-runs", str(args.latency_runs),
           "--max-search-time", "0", "--out", str(out), "--json", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    row = {"model": model, "format": fmt, "exit": proc.returncode, "wall_s": round(wall, 1)}
    if proc.returncode not in (0, 1):
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
        row["error"] = (errors or proc.stderr.strip().splitlines()[-1:] or ["?"])[-1][:300]
        return row
    man = json.loads(proc.stdout)
    v = next(m for m in man["models"] if m["format"] == fmt)["validation"]
    one = v["latency_ms"]["one_thread"]
    row.update(agreement=v["agreement"], sqnr_db=v["sqnr_db"], samples=v["samples"],
               size_ratio=round(v["size_bytes"]["int8"] / v["size_bytes"]["fp32"], 3),
               int8_mb=round(v["size_bytes"]["int8"] / 1e6, 2),
               latency_ratio=round(one["int8"]["p50"] / one["fp32"]["p50"], 3),
               int8_ms=one["int8"]["p50"], fp32_ms=one["fp32"]["p50"],
               missed=[b["name"] for b in v["budgets"] if not b["passed"]])
    return row


def table(rows: list[dict]) -> str:
    head = ("| model | format | built | agreement | SQNR dB | INT8 MB | size INT8/FP32 | 1-thread p50 INT8/FP32 "
            "(ms) | latency ratio | missed budgets | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['format']} | no (exit {r['exit']}): {r['error']} "
                         f"| | | | | | | | {r['wall_s']} |")
            continue
        lines.append(f"| {r['model']} | {r['format']} | yes (exit {r['exit']}) | {r['agreement']:.3f} "
                     f"| {r['sqnr_db']:.1f} | {r['int8_mb']} | {r['size_ratio']:.2f} "
                     f"| {r['int8_ms']:.2f} / {r['fp32_ms']:.2f} | {r['latency_ratio']:.2f} "
                     f"| {', '.join(r['missed']) or '-'} | {r['wall_s']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="input side, px")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--val-samples", type=int, default=100)
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--formats", default="tflite,onnx")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    os.nice(10)  # every build below inherits it: the machine is shared
    val = natural_photos(max(args.val_samples, 100))
    rows, t0 = [], time.perf_counter()
    with scratch_dir("edgepack-matrix-") as work:
        for model in args.models.split(","):
            for fmt in args.formats.split(","):
                rows.append(build(model, fmt, args, val, work))
                print(json.dumps(rows[-1]), flush=True)
                for leftover in work.glob(f"{model}-{fmt}*"):  # bundles are 10-100 MB each: keep the disk free
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    minutes = (time.perf_counter() - t0) / 60
    intro = (f"Each model built by `edgepack build` for android-arm64 (full-integer .tflite) and raspberry-pi-4 "
             f"(INT8 .onnx), input 1x3x{args.size}x{args.size}, {args.calib_samples} calibration photos "
             f"(calibration_data/images), {args.val_samples} held-out natural-photo crops as validation "
             "(`make_calibration.py --split val`), accuracy-aware search off, latency = one-thread p50 on this "
             "host as measured by the build. torchvision models have random weights (seeded, 1000 classes, "
             "BatchNorm statistics re-estimated on 64 calibration photos, passed as --weights; near-tied logits "
             "make agreement harder than on a trained model); EfficientNet-Lite0 is pretrained. "
             f"'missed budgets' are the target profile's (size 10 MB, latency, agreement 0.95). Whole run: "
             f"{minutes:.1f} min on the shared 2-core machine (other jobs running). "
             "`benchmarks/bench_model_matrix.py`.")
    body = intro + "\n\n" + table(rows)
    print(body)
    if not args.no_write:
        update_section("model-matrix", "Model matrix: seven classifiers to full-integer TFLite and INT8 ONNX", body)


if __name__ == "__main__":
    main()
