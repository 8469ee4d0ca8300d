"""What limits EfficientNet-Lite0's INT8 agreement on the fresh photos (issue 14's 96 %): the photos, and two ways
of keeping the costliest activations finer than 8 bits in ONNX Runtime.

1. FP32 against itself with every pixel dithered by up to 0.5 / 1 of its 8-bit step (uniform, seed 0; mean 127,
   std 128, so one step is 1/128): how many crops keep their top-1 under the rounding another decoder or resizer
   adds (edgepack.stages.validate.dither_floor measures the 0.5 row in every classifier build on photos).
2. The default INT8 ONNX (edgepack's quantize_onnx, 200 calibration crops) on all crops, on the crops FP32 keeps
   under four different half-step dithers ("stable"), and on the others.
3. The 8 activations whose rounding costs most at the outputs (diagnose.costly_activations, ranked on 200 crops
   of the old set, as the accuracy search ranks them) kept finer than 8 bits, two ways: their writers and readers
   in float (`exclude_nodes`, the search's step), or quantized to 16 bits by ONNX Runtime's own mixed precision
   (TensorQuantOverrides with QUInt16, made consistent by its MixedPrecisionTensorQuantOverridesFixer), the
   weights staying INT8.

Latency: 1-thread p50, FP32 and the INT8 files interleaved in one child process (edgepack.device.measure).

    bash scripts/opencv-samples.sh
    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_fresh_limits.py [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_fresh_set import _crops  # noqa: E402
from benchmarks.common import natural_photos, scratch_dir, update_section  # noqa: E402

COSTLIEST = 8
STEP = 1 / 128   # one 8-bit pixel step in the model's units (mean 127, std 128)


def _sixteen_bit_overrides(fp32_path: Path, tensors: list[str]) -> dict:
    """ONNX Runtime's TensorQuantOverrides putting ``tensors`` in 16 bits, fixed up by its own helper so that every
    op's inputs and outputs agree (it inserts the conversions)."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.execution_providers.qnn.mixed_precision_overrides_utils import (
        MixedPrecisionTensorQuantOverridesFixer,
    )
    from onnxruntime.quantization.tensor_quant_overrides import TensorQuantOverridesHelper

    overrides = TensorQuantOverridesHelper({t: [{"quant_type": QuantType.QUInt16}] for t in tensors})
    fixer = MixedPrecisionTensorQuantOverridesFixer.create_from_model(overrides, onnx.load(str(fp32_path)),
                                                                      QuantType.QUInt8)
    fixer.apply(QuantType.QUInt8, False)
    return overrides.get_dict()


def _quantize(fp32: Path, out: Path, calib, exclude=(), overrides: dict | None = None) -> float:
    """edgepack's quantize_onnx (raspberry-pi-4's arm64 plan); ``overrides`` go to quantize_static's
    extra_options as TensorQuantOverrides. Returns the seconds it took."""
    import edgepack.backends.onnx_quantize as oq

    plain = oq._run_quantize_static

    def with_overrides(*args, **kwargs):
        args = list(args)
        args[7] = {**args[7], "TensorQuantOverrides": overrides}  # extra_options
        return plain(*args, **kwargs)

    t0 = time.time()
    if overrides:
        oq._run_quantize_static = with_overrides
    try:
        oq.quantize_onnx(fp32, out, calib, method="minmax", per_channel=True, target_arch="arm64",
                         exclude_nodes=list(exclude))
    finally:
        oq._run_quantize_static = plain
    return time.time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print the tables, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    from benchmarks.common import efficientnet_lite0
    from edgepack.backends import onnx as onnx_backend
    from edgepack.device import measure
    from edgepack.quantize.diagnose import costly_activations, layer_errors
    from edgepack.stages.validate import dithered_agreement

    t0 = time.time()
    with scratch_dir("edgepack-bench-limits-") as work:
        calib, _, _ = efficientnet_lite0(work)
        sets = {"old": _crops(natural_photos(500, "val")), "fresh": _crops(natural_photos(500, "fresh"))}
        fp32 = work / "fp32.onnx"
        run = onnx_backend.Runner(fp32, threads=2).run_samples
        top = {k: run(x).argmax(1) for k, x in sets.items()}
        lines = ["| FP32 against itself, every pixel dithered by up to | old set | fresh set |", "|---|---|---|"]
        for steps in (0.5, 1.0):
            got = {k: dithered_agreement(run, x, top[k], 2 * steps * STEP) for k, x in sets.items()}
            lines.append(f"| {steps} pixel step | {got['old']:.3f} | {got['fresh']:.3f} |")
            print(lines[-1], flush=True)

        seconds = {"default": _quantize(fp32, work / "default.onnx", calib)}
        runs = {"default": onnx_backend.Runner(work / "default.onnx", threads=2).run_samples}
        stable_lines = ["| default INT8 ONNX | set | all crops | crops FP32 keeps under 4 half-step dithers | "
                        "the other crops |", "|---|---|---|---|---|"]
        for k, x in sets.items():
            stable = np.ones(len(x), bool)
            for seed in range(4):
                noise = np.random.default_rng(seed).uniform(-0.5, 0.5, x.shape) * STEP
                stable &= run((x + noise).astype(np.float32)).argmax(1) == top[k]
            same = runs["default"](x).argmax(1) == top[k]
            stable_lines.append(f"| agreement with FP32 | {k} | {same.mean():.3f} | {same[stable].mean():.3f} "
                                f"({stable.sum()} crops) | {same[~stable].mean():.3f} ({(~stable).sum()} crops) |")
            print(stable_lines[-1], flush=True)

        ranked = costly_activations(fp32, work / "default.onnx", sets["old"][:200],
                                    layer_errors(fp32, work / "default.onnx", sets["old"][:200]))[:COSTLIEST]
        tensors = [a["tensor"] for a in ranked]
        seconds.update({"float": _quantize(fp32, work / "float.onnx", calib,
                                      exclude=sorted({n for a in ranked for n in a["nodes"]})),
                   "uint16": _quantize(fp32, work / "uint16.onnx", calib,
                                       overrides=_sixteen_bit_overrides(fp32, tensors))})
        names = {"default": "all activations 8-bit (the default recipe)",
                 "float": f"the {COSTLIEST} costliest: writers and readers in float (the search's step)",
                 "uint16": f"the {COSTLIEST} costliest in 16 bits (ONNX Runtime mixed precision), weights INT8"}
        lat = measure.latency({"fp32": ("onnx", fp32), **{k: ("onnx", work / f"{k}.onnx") for k in names}},
                              sets["old"][:1], threads=1, runs=60, workdir=work)
        rows = ["| INT8 ONNX | old set | fresh set | size INT8/FP32 | 1-thread p50 INT8/FP32 | quantize s |",
                "|---|---|---|---|---|---|"]
        for key, name in names.items():
            r = onnx_backend.Runner(work / f"{key}.onnx", threads=2).run_samples
            got = {k: float((r(x).argmax(1) == top[k]).mean()) for k, x in sets.items()}
            rows.append(f"| {name} | {got['old']:.3f} | **{got['fresh']:.3f}** | "
                        f"{(work / f'{key}.onnx').stat().st_size / fp32.stat().st_size:.3f} | "
                        f"{lat[key]['p50'] / lat['fp32']['p50']:.2f} | {seconds[key]:.0f} |")
            print(rows[-1], flush=True)
    body = (__doc__.split("\n\n")[0].replace("\n", " ") + "\n\n" + "\n".join(lines) + "\n\n"
            + "\n".join(stable_lines) + "\n\n" + f"Activations kept finer: {', '.join(f'`{t}`' for t in tensors)}."
            + "\n\n" + "\n".join(rows) + "\n\n"
            + f"Reproduce: `bash scripts/opencv-samples.sh; PYTHONPATH=. nice -n 10 .venv/bin/python "
              f"benchmarks/bench_fresh_limits.py` ({(time.time() - t0) / 60:.0f} min here, "
              f"{time.strftime('%Y-%m-%d')}).")
    print(body)
    if not args.no_write:
        update_section("fresh-limits", "EfficientNet-Lite0 on the fresh photos: what limits INT8 agreement", body)


if __name__ == "__main__":
    main()
