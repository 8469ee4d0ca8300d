"""LRASPP shapes segmenter, end to end: make data, build both targets with edgepack, score the shipped files.

1. Write the calibration split and the held-out split (examples.lraspp_shapes.data; the held-out backgrounds
   are styles and photos that neither calibration nor training used) into ``--work``.
2. ``edgepack build examples.lraspp_shapes.model:create_model --task segment`` for raspberry-pi-4 (INT8 ONNX)
   and android-arm64 (full-integer TFLite), as subprocesses from the repository root, timing each build.
3. Read each build's own figures from its manifest.json (mIoU and pixel accuracy of its FP32 and INT8 files on
   the held-out masks, sizes, 1-thread latency, the accuracy search if it ran), and re-score the shipped INT8
   file against the PyTorch FP32 model on the same held-out images with edgepack's segmentation metric.
4. Write results.json to ``--work`` and beside this file, and the results section of the README.

    python -m examples.lraspp_shapes.evaluate --work /work/tmp/lraspp/eval             # everything
    python -m examples.lraspp_shapes.evaluate --work /work/tmp/lraspp/eval --no-build  # rescore existing builds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from examples import evaluation
from examples.evaluation import ok
from examples.lraspp_shapes import data
from examples.lraspp_shapes.model import CLASSES, IMAGE_SIZE, MEAN, STD

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODEL = "examples.lraspp_shapes.model:create_model"
TARGETS = {"raspberry-pi-4": "onnx", "android-arm64": "tflite"}
PREPROCESS = ["--resize", str(IMAGE_SIZE), "--crop", str(IMAGE_SIZE), "--scale", "0.00392156862745098",
              "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--channel-order", "RGB"]
GOALS = {"drop": 1.0, "size": 0.30, "latency": {"onnx": 0.60, "tflite": 0.65}}
RESULTS_MARK = "<!-- results: written by evaluate.py -->"


def build_command(target: str, work: Path, extra: list[str]) -> list[str]:
    """The ``edgepack build`` command line for ``target`` (module form: runs from a checkout too)."""
    return [sys.executable, "-m", "edgepack.cli", "build", MODEL, "--task", "segment", "--target", target,
            "--input-shape", f"1,3,{IMAGE_SIZE},{IMAGE_SIZE}", *PREPROCESS, "--labels", str(work / "classes.txt"),
            "--calib", str(work / "calib" / "images"), "--val", str(work / "heldout" / "images"),
            "--labels-dir", str(work / "heldout" / "masks"), "--max-miou-drop", str(GOALS["drop"]),
            "--latency-runs", "30", "--out", str(work / target), "--force", "--json", *extra]


def build(target: str, work: Path, extra: list[str]) -> dict:
    """Run one build (examples.evaluation.run_build); exit 1 (a budget missed) still leaves a bundle to score."""
    return evaluation.run_build(build_command(target, work, extra), work, target)


@dataclass(frozen=True)
class Heldout:
    """The held-out split as the models see it: inputs (N, 3, S, S) float32 as edgepack feeds them, the label
    masks in file order, and the PyTorch FP32 model's class scores."""

    x: np.ndarray
    masks: list
    fp32: np.ndarray


def heldout(work: Path) -> Heldout:
    """Load the held-out split as edgepack does and run the PyTorch FP32 model on it."""
    import torch

    from edgepack.config import Preprocess
    from edgepack.inputs import data as ep_data
    from edgepack.inputs.labels import read_masks
    from examples.lraspp_shapes.model import create_model

    pre = Preprocess(resize=IMAGE_SIZE, crop=IMAGE_SIZE, scale=1 / 255, mean=MEAN, std=STD, channel_order="RGB")
    shape = (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    ds = ep_data.load(str(work / "heldout" / "images"), input_shape=shape, preprocess=pre, count=None, seed=1,
                      role="validation")
    masks = read_masks(ds, str(work / "heldout" / "masks"), input_shape=shape, preprocess=pre,
                       num_classes=len(CLASSES))
    model = create_model()
    with torch.inference_mode():
        fp32 = np.concatenate([model(torch.from_numpy(ds.x[i:i + 32])).numpy() for i in range(0, len(ds.x), 32)])
    return Heldout(ds.x, masks, fp32)


def run(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) class scores of the file at ``path`` (edgepack's runner: batch 1, 2 threads)."""
    from edgepack import backends
    from edgepack.tasks import postprocess

    out = backends.get(fmt).Runner(path, threads=2).run_samples(x)
    return postprocess.to_nchw(np.asarray(out, np.float32), x.shape[-2:])


def score(target: str, work: Path, ho: Heldout) -> dict:
    """The build's own figures (manifest) and the shipped INT8 file re-scored against the PyTorch model."""
    from edgepack.tasks.segment import Segment

    fmt, out = TARGETS[target], work / target
    man = json.loads((out / "manifest.json").read_text())
    val = man["validation"]
    seg = Segment().quality(ho.fp32, run(evaluation.int8_file(out), fmt, ho.x), ho.masks)
    lat = val["latency_ms"]["one_thread"]
    size = val["size_bytes"]
    return {"target": target, "format": fmt, "samples": len(ho.x),
            "manifest": {k: val.get(k) for k in ("miou_fp32", "miou_int8", "miou_drop", "pixel_accuracy_fp32",
                                                 "pixel_accuracy_int8", "pixel_accuracy_drop", "iou_int8",
                                                 "sqnr_db", "agreement")},
            "rescored_vs_pytorch": {k: seg[k] for k in ("miou_fp32", "miou_int8", "miou_drop",
                                                        "pixel_accuracy_fp32", "pixel_accuracy_int8",
                                                        "pixel_accuracy_drop", "iou_int8", "sqnr_db")},
            "size_bytes": size, "size_ratio": round(size["int8"] / size["fp32"], 3),
            "latency_1t_ms": {"fp32": lat["fp32"]["p50"], "int8": lat["int8"]["p50"]},
            "latency_ratio": round(lat["int8"]["p50"] / lat["fp32"]["p50"], 3),
            "device": _device(val), "passed": man.get("passed"), "warnings": man.get("warnings"),
            "search": val.get("search") or man.get("search")}


def _device(val: dict) -> dict | None:
    """The build's device stage (examples.evaluation.device_summary) with mIoU on the device's kernels and on
    the host for the same images."""
    out = evaluation.device_summary(val)
    if out is not None:
        dev = val["device"]
        out = {"qemu_cpu": out.pop("qemu_cpu"), "instructions": out.pop("instructions"),
               "instruction_ratio": out.pop("instruction_ratio"),
               "miou_on_device": {k: (dev.get("quality_on_device") or {}).get(f"miou_{k}") for k in ("fp32", "int8")},
               "miou_on_host_subset": {k: (dev.get("quality_on_host_subset") or {}).get(f"miou_{k}")
                                       for k in ("fp32", "int8")}, **out}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/work/tmp/lraspp/eval"))
    ap.add_argument("--calib-count", type=int, default=200)
    ap.add_argument("--heldout-count", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--no-build", action="store_true", help="score the builds already in --work")
    ap.add_argument("--build-arg", action="append", default=[], help="extra edgepack build argument (repeatable)")
    ap.add_argument("--readme", type=Path, default=HERE / "README.md")
    args = ap.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    (work / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for split, count in (("calib", args.calib_count), ("heldout", args.heldout_count)):
        if not (work / split / "shapes.json").is_file():
            data.write(split, count, work / split, args.seed)
    previous = json.loads((work / "results.json").read_text()) if (work / "results.json").is_file() else {}
    builds = previous.get("builds", {})
    if not args.no_build:
        for target in args.targets:
            builds[target] = build(target, work, args.build_arg)
    ho = heldout(work)
    rows = [score(t, work, ho) for t in args.targets]
    results = {"builds": builds, "rows": rows}
    for path in (work / "results.json", HERE / "results.json"):
        path.write_text(json.dumps(results, indent=1))
    write_readme(args.readme, results)


def results_section(results: dict) -> str:
    """The README's results tables and the commands that produced them."""
    lines = ["Held-out split (300 images), each build's own figures (manifest.json: its FP32 file and its shipped "
             "INT8 file, same preprocessing, same masks):", "",
             "| target (file) | metric | FP32 | INT8 | drop (points) | goal |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        name, m = f"{r['target']} ({r['format']})", r["manifest"]
        lines.append(f"| {name} | mIoU | {m['miou_fp32']:.2f} | {m['miou_int8']:.2f} | {m['miou_drop']:.2f} | "
                     f"<= {GOALS['drop']} {ok(m['miou_drop'] <= GOALS['drop'])} |")
        lines.append(f"| {name} | pixel accuracy | {m['pixel_accuracy_fp32']:.2f} | {m['pixel_accuracy_int8']:.2f}"
                     f" | {m['pixel_accuracy_drop']:.2f} | |")
    lines += ["", "The shipped INT8 files re-scored by evaluate.py against the PyTorch FP32 model (create_model(), "
              "the same 300 inputs):", "",
              "| target (file) | mIoU FP32 (PyTorch) | mIoU INT8 | drop | pixel acc. FP32 | INT8 | INT8 IoU per class "
              f"({', '.join(CLASSES)}) |", "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        s = r["rescored_vs_pytorch"]
        lines.append(f"| {r['target']} ({r['format']}) | {s['miou_fp32']:.2f} | {s['miou_int8']:.2f} | "
                     f"{s['miou_drop']:.2f} | {s['pixel_accuracy_fp32']:.2f} | {s['pixel_accuracy_int8']:.2f} | "
                     f"{', '.join(f'{v:.1f}' for v in s['iou_int8'])} |")
    lines += ["", *evaluation.size_latency_table(results, GOALS)]
    dev = [r for r in results["rows"] if r.get("device")]
    if dev:
        lines += ["", "The build's device stage (the profile's CPU under qemu-user, the device's own runtime wheels, "
                  "8 held-out images; estimates, not measurements on a device):", ""]
        for r in dev:
            d = r["device"]
            text = (f"- {r['target']} ({r['format']}, qemu `-cpu {d['qemu_cpu']}`): instructions per inference "
                    f"FP32 {d['instructions']['fp32']:,}, INT8 {d['instructions']['int8']:,} "
                    f"(INT8/FP32 {d['instruction_ratio']:.2f}); mIoU there FP32 {d['miou_on_device']['fp32']}, INT8 "
                    f"{d['miou_on_device']['int8']} (host, same images: {d['miou_on_host_subset']['fp32']}, "
                    f"{d['miou_on_host_subset']['int8']})")
            lines.append(text + evaluation.estimate_text(d))
    searched = [r for r in results["rows"] if r.get("search")]
    if searched:
        lines += ["", "Accuracy-aware search (ran because the first INT8 model missed the mIoU budget):", ""]
        for r in searched:
            lines.append(f"- {r['target']}: `{json.dumps(r['search'])[:600]}`")
    lines += ["", "Commands (`$WORK` = the work folder; run from the repository root):", ""]
    for b in results["builds"].values():
        lines += ["```bash", evaluation.user_command(b["command"]), "```"]
    return "\n".join(lines) + "\n"


def write_readme(path: Path, results: dict) -> None:
    """Replace everything after RESULTS_MARK in ``path`` with the results section."""
    evaluation.write_results(path, RESULTS_MARK, results_section(results))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
