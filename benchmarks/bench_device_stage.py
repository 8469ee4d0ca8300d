"""What the device stage adds to a build: the README's EfficientNet-Lite0 example built for raspberry-pi-4 (ONNX)
and android-arm64 (TFLite), each with its profile's default emulation sample count, in one run.

Per target: the device stage's wall time (the build's own stage timing) and the whole build's, the samples and
guest processes, instructions per inference FP32/INT8 and the dot-product share, device-vs-host agreement, the task
metric on device kernels, the estimate and its verdict. Then the INT8 bundle model is run again on the emulated
device (2 samples) and its instructions per inference compared with the build's (repeatability). Writes the
table into benchmarks/BENCHMARKS.md between the markers for this benchmark. Needs the prepared devices
(`edgepack device prepare raspberry-pi-4 android-arm64`).

    nice -n 10 .venv/bin/python benchmarks/bench_device_stage.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import natural_photos, scratch_dir, update_section  # noqa: E402

TARGETS = ("raspberry-pi-4", "android-arm64")


VAL_SAMPLES = 100   # of the 500 photos: the host stages' per-layer diagnosis holds every layer's output of every
                    # validation sample (about 40 MB a sample here); 500 were OOM-killed beside other jobs


def _build(target: str, out: Path, val: Path):
    from edgepack import api, config

    data = config.read_toml(ROOT / "examples/efficientnet_lite0/edgepack.toml")
    data.update(target=target, out=str(out), force=True, val=str(val), val_samples=VAL_SAMPLES, emulate=True)
    return api.build(config.from_mapping(data, where="bench"))


def _repeat(target: str, bundle: Path, work: Path) -> int:
    """Instructions per inference of the shipped INT8 model, run again on the emulated device (2 samples)."""
    import numpy as np

    from edgepack import targets
    from edgepack.device import emulation, run_emulated

    profile = targets.load(target)
    fmt = profile.formats[0]
    feed = {"input": np.random.default_rng(3).normal(0, 1, (2, 3, 224, 224)).astype(np.float32)}
    job = run_emulated.Job("int8", fmt, bundle / ("model.onnx" if fmt == "onnx" else "model.tflite"))
    runs = run_emulated.run(emulation.find(profile), [job], feed, work / "repeat", run_emulated.RunOptions(processes=2))
    return runs["int8"].insns["total"]


def _row(target: str, result, again: int) -> str:
    man = result.manifest
    v = man["models"][0]["validation"]
    d, fmt = v["device"], man["models"][0]["format"]
    ins = d["instructions"]
    est = v["latency_ms"].get("device_emulated", {}).get("int8")
    kind = "" if not est else (" (emulated)" if "emulated" in est["kind"] else " (operator-count)")
    lat = next((b for b in v["budgets"] if b["name"] == "latency_p50_ms"), {})
    q = d["quality_on_device"]
    metric = f"agreement {q['agreement']:.3f}" if q["accuracy_int8"] is None else f"acc {q['accuracy_int8']:.1f} %"
    band = f"{est['p50']:.1f} [{est['band'][0]:.1f}-{est['band'][1]:.1f}]{kind}" if est else "-"
    return (f"| {target} ({fmt}, {d['qemu_cpu']}) | {d['samples']} | {man['timings_s']['device']:.0f} | "
            f"{result.seconds:.0f} | {ins['fp32']['total'] / 1e6:.1f} / {ins['int8']['total'] / 1e6:.1f} | "
            f"{ins['int8']['dotprod'] / max(ins['int8']['total'], 1):.1%} | "
            f"{d['agreement_with_host']['fp32']['top1']:.3f} / {d['agreement_with_host']['int8']['top1']:.3f} "
            f"(max diff {d['agreement_with_host']['int8']['max_abs_diff']:.3g}) | {metric} (host subset "
            f"{d['quality_on_host_subset']['agreement']:.3f}) | {band} vs {lat.get('limit', '-')} ms: "
            f"{lat.get('verdict', '-')} | {abs(again - ins['int8']['total']) / ins['int8']['total']:.4%} |")


def _one(target: str, work: Path, val: Path) -> str:
    result = _build(target, work / target, val)
    row = _row(target, result, _repeat(target, work / target, work / f"r-{target}"))
    print(row, flush=True)
    return row


def main() -> None:
    """Build for each target (argv: target names, default TARGETS); the table is rewritten after each one."""
    t0 = time.perf_counter()
    val = natural_photos(500)
    rows = []
    with scratch_dir("edgepack-bench-device-") as work:
        for target in sys.argv[1:] or TARGETS:
            rows.append(_one(target, work, val))
            _write(rows, time.perf_counter() - t0)


def _commit() -> str:
    """The checkout's commit (short hash), so the table says what it measured."""
    import subprocess

    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip() or "unknown"


def _write(rows: list[str], seconds: float) -> None:
    header = ("| target (format, emulated CPU) | samples | device stage s | whole build s | Minsn / inference "
              "FP32 / INT8 | INT8 dot-product share | device vs host top-1 FP32 / INT8 | metric on device kernels | "
              "estimate INT8 ms [band] vs budget | INT8 count, repeat run vs build |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    body = (f"Measured at commit {_commit()}. EfficientNet-Lite0 (pretrained), the README's example config with "
            f"`target` changed and "
            f"`val_samples = {VAL_SAMPLES}` (a seeded subset of the 500 held-out natural photos); the device stage "
            f"runs the profile's `emulation_samples` of them, FP32 and INT8, in {os.cpu_count()} parallel qemu-user "
            f"processes (one guest thread each) with the bundle's run.py. The estimate is the one the stage uses "
            f"(emulated-work or operator-count, whichever has the smaller leave-one-out error). Whole run "
            f"{seconds / 60:.1f} min on the shared 2-core machine (other jobs running: timings are upper "
            f"bounds).\n\n" + header + "\n" + "\n".join(rows))
    update_section("device-stage", "The device stage: emulated ARM runs added to a build", body)
    print(body)


if __name__ == "__main__":
    main()
