"""SSDLite shapes detector, end to end: make data, build both targets with edgepack, score the shipped files.

1. Write the calibration split and the held-out split (examples.ssdlite_shapes.data; held-out backgrounds are
   styles and photos that neither training nor calibration used) into ``--work``.
2. ``edgepack build examples.ssdlite_shapes.model:create_model --task detect`` for raspberry-pi-4 (INT8 ONNX) and
   android-arm64 (full-integer TFLite), as subprocesses, timing each build.
3. Read each build's own mAP@0.5 and mAP@0.5:0.95 (FP32 file vs INT8 file of its format, on the held-out images
   and YOLO labels) from its manifest.json, and re-score the shipped INT8 file against the PyTorch FP32 model
   with edgepack's detect metric (pycocotools) on the same images; sizes and 1-thread latency come from the
   manifest.
4. Write results.json to ``--work`` (and beside this file) and the results section of the README.

    python -m examples.ssdlite_shapes.evaluate --work /work/tmp/ssd/eval              # everything
    python -m examples.ssdlite_shapes.evaluate --work /work/tmp/ssd/eval --no-build   # rescore existing builds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from examples import evaluation
from examples.evaluation import ok
from examples.ssdlite_shapes import data

HERE = Path(__file__).resolve().parent
MODEL = "examples.ssdlite_shapes.model:create_model"
TARGETS = {"raspberry-pi-4": "onnx", "android-arm64": "tflite"}
#: torchvision SSDLite's normalisation, (x / 255 - 0.5) / 0.5; resize/crop at SIZE leave a SIZE image as it is
PREPROCESS = ["--resize", str(data.SIZE), "--crop", str(data.SIZE), "--scale", "0.00392156862745098",
              "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
GOALS = {"drop": 1.0, "size": 0.30, "latency": {"onnx": 0.60, "tflite": 0.65}}
RESULTS_MARK = "<!-- results: written by evaluate.py -->"


def build_command(target: str, work: Path, extra: list[str]) -> list[str]:
    """The ``edgepack build`` command line for ``target`` (module form: runs from a checkout too)."""
    return [sys.executable, "-m", "edgepack.cli", "build", MODEL, "--task", "detect", "--target", target,
            "--input-shape", f"1,3,{data.SIZE},{data.SIZE}", *PREPROCESS,
            "--labels", str(work / "calib" / "classes.txt"), "--calib", str(work / "calib" / "images"),
            "--val", str(work / "heldout" / "images"), "--labels-dir", str(work / "heldout" / "labels"),
            "--max-map-drop", str(GOALS["drop"]), "--latency-runs", "30",
            "--out", str(work / target), "--force", "--json", *extra]


def build(target: str, work: Path, extra: list[str]) -> dict:
    """Run one build (examples.evaluation.run_build); exit 1 (a budget missed) still leaves a bundle to score."""
    return evaluation.run_build(build_command(target, work, extra), work, target)


def heldout(work: Path):
    """(inputs (N, 3, S, S) float32 as edgepack feeds them, labelled boxes per image, FP32 PyTorch outputs)."""
    import torch

    from edgepack.config import Preprocess
    from edgepack.inputs import data as ep_data
    from edgepack.inputs.labels import read_boxes
    from examples.ssdlite_shapes.model import NUM_CLASSES, create_model

    pre = Preprocess(resize=data.SIZE, crop=data.SIZE, scale=1 / 255, mean=(0.5,) * 3, std=(0.5,) * 3)
    shape = (1, 3, data.SIZE, data.SIZE)
    ds = ep_data.load(str(work / "heldout" / "images"), input_shape=shape, preprocess=pre, count=None, seed=1,
                      role="validation")
    truth = read_boxes(ds, str(work / "heldout" / "labels"), input_shape=shape, preprocess=pre,
                       num_classes=NUM_CLASSES)
    net = create_model()
    with torch.inference_mode():
        outs = [net(torch.from_numpy(np.asarray(ds.x[i:i + 50], np.float32))) for i in range(0, len(ds.x), 50)]
    fp32 = [np.concatenate([o[k].numpy() for o in outs]) for k in (0, 1)]
    return np.asarray(ds.x, np.float32), truth, fp32


def run(path: Path, fmt: str, x: np.ndarray) -> list[np.ndarray]:
    """Both outputs of the file at ``path`` on ``x``, boxes then scores (edgepack's runner: batch 1, 2 threads)."""
    from edgepack import backends

    out = backends.get(fmt).Runner(path, threads=2).run_samples(x, all_outputs=True)
    outs = [np.asarray(o, np.float32) for o in (out if isinstance(out, list | tuple) else [out])]
    return sorted(outs, key=lambda o: o.shape[-1] != 4)   # boxes first, as the PyTorch model (TFLite reorders)


def score(target: str, work: Path, ho) -> dict:
    """The manifest's mAP figures, the shipped INT8 file re-scored against the PyTorch FP32 model, sizes and
    latency ratios."""
    from edgepack.tasks.detect import Detect

    x, truth, fp32 = ho
    fmt, out = TARGETS[target], work / target
    man = json.loads((out / "manifest.json").read_text())
    q = Detect().quality(fp32, run(evaluation.int8_file(out), fmt, x), truth)
    val = man["validation"]
    lat, size = val["latency_ms"]["one_thread"], val["size_bytes"]
    return {"target": target, "format": fmt, "samples": len(x), "objects": q["objects"],
            "manifest": {k: val.get(k) for k in ("map50_fp32", "map50_int8", "map50_drop", "map_fp32", "map_int8",
                                                 "map_drop", "detections_fp32", "detections_int8", "sqnr_db")},
            "rescored_vs_pytorch": {k: q[k] for k in ("map50_fp32", "map50_int8", "map50_drop", "map_fp32",
                                                      "map_int8", "map_drop", "detections_fp32", "detections_int8")},
            "size_bytes": size, "size_ratio": round(size["int8"] / size["fp32"], 3),
            "latency_1t_ms": {"fp32": lat["fp32"]["p50"], "int8": lat["int8"]["p50"]},
            "latency_ratio": round(lat["int8"]["p50"] / lat["fp32"]["p50"], 3),
            "device": _device(val), "passed": man.get("passed"),
            "search": val.get("search") or man.get("search"), "warnings": man.get("warnings")}


def _device(val: dict) -> dict | None:
    """The build's device stage (examples.evaluation.device_summary) with mAP@0.5 on the device's kernels."""
    out = evaluation.device_summary(val)
    if out is not None:
        q = val["device"].get("quality_on_device") or {}
        out = {"qemu_cpu": out.pop("qemu_cpu"), "samples": val["device"].get("samples"),
               "map50_on_device": {k: q.get(k) for k in ("map50_fp32", "map50_int8", "map50_drop")}, **out}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/work/tmp/ssd/eval"))
    ap.add_argument("--calib-count", type=int, default=200)
    ap.add_argument("--heldout-count", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--no-build", action="store_true", help="score the builds already in --work")
    ap.add_argument("--build-arg", action="append", default=[], help="extra edgepack build argument (repeatable)")
    ap.add_argument("--readme", type=Path, default=HERE / "README.md")
    args = ap.parse_args(argv)
    work = args.work
    for split, count in (("calib", args.calib_count), ("heldout", args.heldout_count)):
        if not (work / split / "boxes.json").is_file():
            data.write(split, count, work / split, args.seed)
    previous = json.loads((work / "results.json").read_text()) if (work / "results.json").is_file() else {}
    builds = previous.get("builds", {})
    if not args.no_build:
        for target in args.targets:
            builds[target] = build(target, work, args.build_arg)
            (work / "results.json").write_text(json.dumps({**previous, "builds": builds}, indent=1))
    ho = heldout(work)
    rows = [score(t, work, ho) for t in TARGETS if (work / t / "manifest.json").is_file()]
    results = {"builds": builds, "rows": rows}
    text = json.dumps(results, indent=1)
    (work / "results.json").write_text(text)
    (HERE / "results.json").write_text(text.replace(str(work), "$WORK").replace(sys.executable, "python"))
    write_readme(args.readme, results)


def results_section(results: dict) -> str:
    """The README's results tables and the commands that produced them."""
    lines = ["| target (file) | metric | FP32 | INT8 | drop (points) | goal |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        name = f"{r['target']} ({r['format']})"
        for src, label in (("manifest", "edgepack's build (FP32 file vs INT8 file)"),
                           ("rescored_vs_pytorch", "re-scored: shipped INT8 vs PyTorch FP32")):
            m = r[src]
            lines.append(f"| {name} | mAP@0.5, {label} | {m['map50_fp32']:.2f} | {m['map50_int8']:.2f} | "
                         f"{m['map50_drop']:.2f} | <= {GOALS['drop']} {ok(m['map50_drop'] <= GOALS['drop'])} |")
            lines.append(f"| {name} | mAP@0.5:0.95, {label} | {m['map_fp32']:.2f} | {m['map_int8']:.2f} | "
                         f"{m['map_drop']:.2f} | (none) |")
    lines += ["", *evaluation.size_latency_table(results, GOALS)]
    dev = [r for r in results["rows"] if r.get("device")]
    if dev:
        lines += ["", "The builds' device stage (the profile's CPU under qemu-user, the device's own runtime wheels, "
                  "a seeded subset of the held-out images; estimates, not measurements on a device):", ""]
        for r in dev:
            d, m = r["device"], r["device"]["map50_on_device"]
            text = (f"- {r['target']} ({r['format']}, qemu `-cpu {d['qemu_cpu']}`, {d['samples']} images): mAP@0.5 "
                    f"FP32 {m['map50_fp32']:.2f}, INT8 {m['map50_int8']:.2f} on the device's kernels; instructions "
                    f"per inference FP32 {d['instructions']['fp32']:,}, INT8 {d['instructions']['int8']:,} "
                    f"(INT8/FP32 {d['instruction_ratio']:.2f})")
            lines.append(text + evaluation.estimate_text(d, ms=".1f"))
    lines += ["", f"{results['rows'][0]['samples']} held-out images, {results['rows'][0]['objects']} labelled shapes. "
              "Commands (`$WORK` = the work folder, run from the repository root):", ""]
    for b in results["builds"].values():
        lines += ["```bash", evaluation.user_command(b["command"]), "```"]
    return "\n".join(lines) + "\n"


def write_readme(path: Path, results: dict) -> None:
    """Replace everything after RESULTS_MARK in ``path`` with the results section."""
    evaluation.write_results(path, RESULTS_MARK, results_section(results))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
