"""edgepack's INT8 ONNX vs onnxruntime `quantize_static` with default settings, in one run.

Same model (pretrained EfficientNet-Lite0), same FP32 export (edgepack's, onnxslim-simplified),
same 200 calibration images, same 500 held-out natural photos. Measures top-1 agreement with FP32,
SQNR, file size, latency p50 at 1 thread and at the target's threads (capped at the host's cores;
both models interleaved in one child process), and quantization wall time. Writes the table into
benchmarks/BENCHMARKS.md between the markers for this benchmark.

    .venv/bin/python benchmarks/bench_onnx_int8.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import efficientnet_lite0, scratch_dir, update_section  # noqa: E402
from edgepack.backends import onnx as onnx_backend  # noqa: E402
from edgepack.device import measure  # noqa: E402
from edgepack.tasks.classify import Classify  # noqa: E402

quality = Classify().quality
from edgepack.util import host_cores  # noqa: E402


def ort_default(fp32: Path, out: Path, calib: np.ndarray) -> None:
    """What a user gets from onnxruntime.quantization.quantize_static with its defaults."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(out), Reader())


def _run(work: Path) -> None:
    from edgepack.backends.onnx_quantize import quantize_onnx

    calib, val, ood = efficientnet_lite0(work)  # and work/fp32.onnx
    variants = {"FP32": None, "ORT quantize_static defaults": ort_default,
                "edgepack": lambda f, o, c: quantize_onnx(f, o, c, method="minmax", per_channel=True)}
    rows, paths = {}, {"FP32": work / "fp32.onnx"}
    for name, fn in variants.items():
        if fn is None:
            continue
        paths[name] = work / f"{len(paths)}.onnx"
        t0 = time.perf_counter()
        fn(work / "fp32.onnx", paths[name], calib)
        rows[name] = {"wall_s": time.perf_counter() - t0}
    outs = {n: onnx_backend.Runner(p, threads=host_cores()).run_samples(val) for n, p in paths.items()}
    outs_ood = {n: onnx_backend.Runner(p, threads=host_cores()).run_samples(ood) for n, p in paths.items()}
    threads = min(4, host_cores())
    lat1 = measure.latency({n: ("onnx", p) for n, p in paths.items()}, val[:1], threads=1, runs=100, workdir=work)
    latn = measure.latency({n: ("onnx", p) for n, p in paths.items()}, val[:1], threads=threads, runs=100,
                           workdir=work)
    table = ["| model | top-1 agreement, natural photos | SQNR dB | agreement, out-of-domain images | "
             f"size MB (x FP32) | p50 ms 1 thr (x FP32) | p50 ms {threads} thr (x FP32) | quantize wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, path in paths.items():
        q = quality(outs["FP32"], outs[name], None)
        q_ood = quality(outs_ood["FP32"], outs_ood[name], None)
        size, fsize = path.stat().st_size, paths["FP32"].stat().st_size
        table.append(f"| {name} | {q['agreement']:.3f} | {q['sqnr_db']:.1f} | {q_ood['agreement']:.3f} | "
                     f"{size / 1e6:.2f} ({size / fsize:.2f}x) | "
                     f"{lat1[name]['p50']:.2f} ({lat1[name]['p50'] / lat1['FP32']['p50']:.2f}x) | "
                     f"{latn[name]['p50']:.2f} ({latn[name]['p50'] / latn['FP32']['p50']:.2f}x) | "
                     f"{rows.get(name, {}).get('wall_s', 0):.1f} |")
    text = "\n".join([
        "EfficientNet-Lite0 (pretrained, ImageNet), 200 calibration crops (calibration_data/images), 500 held-out "
        "crops of 14 other natural photos (animals, objects, scenes, a person) and 500 crops of 5 out-of-domain "
        "images (a retina scan, the moon, a blurred clock, gravel, a scanned page: the model's top-1 on them is "
        "mostly a near-tie); `make_calibration.py --split val` / `--split ood`. Agreement = top-1 of INT8 equals "
        "top-1 of FP32. Latency: "
        "onnxruntime CPU, batch 1, p50 of 100 runs after warm-up, all models interleaved in one process.", "",
        *table, "", f"Host: {host_cores()} cores. Reproduce: `.venv/bin/python benchmarks/bench_onnx_int8.py`."])
    update_section("onnx-int8", "edgepack INT8 ONNX vs onnxruntime quantize_static defaults", text)
    print(text)


def main() -> None:
    with scratch_dir("bench-int8-") as work:
        _run(work)


if __name__ == "__main__":
    main()
