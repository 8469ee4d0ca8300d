#!/usr/bin/env python3
"""Run this edgepack bundle on the device: classify an image, print top-k, optionally time N runs.

Needs only numpy and pillow plus the model's runtime: onnxruntime for .onnx models, and
ai_edge_litert or tflite_runtime for .tflite models. Preprocessing follows manifest.json.

    python3 run.py photo.jpg              # top-5 classes (detectors: boxes; segmenters: class areas)
    python3 run.py photo.jpg --time 100   # also p50/p90 latency over 100 runs, ms
    python3 run.py --golden               # run the stored golden input, compare with the stored output
    python3 run.py --time-golden 100      # time 100 runs on the golden input; one JSON line, ms
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # postprocess.py (detection / segmentation bundles) sits beside this file
sys.dont_write_bytecode = True  # no __pycache__ in the bundle: `edgepack verify` checks every file in it


def preprocess(path, pre, shape):
    """Same steps as edgepack's data.preprocess_image: resize short side, centre crop, scale, normalise."""
    from PIL import Image

    height, width = int(shape[-2]), int(shape[-1])
    crop = pre["crop"] or height
    resize = pre["resize"] or int(round(crop / 0.875))
    with Image.open(path) as img:
        img = img.convert("L" if pre["channel_order"] == "L" else "RGB")
        scale = resize / min(img.size)
        img = img.resize((max(crop, round(img.size[0] * scale)), max(crop, round(img.size[1] * scale))),
                         Image.Resampling.BILINEAR)
        left, top = (img.size[0] - crop) // 2, (img.size[1] - crop) // 2
        img = img.crop((left, top, left + crop, top + crop))
        if (crop, crop) != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    if pre["channel_order"] == "BGR":
        arr = arr[..., ::-1]
    arr = (arr * pre["scale"] - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None], dtype=np.float32)


class OnnxModel:
    def __init__(self, path, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.name = self.sess.get_inputs()[0].name

    def __call__(self, x):
        return self.sess.run(None, {self.name: x})[0].astype(np.float32)

    def outputs(self, x):
        """Every output, float32 (detection heads have several)."""
        return [np.asarray(o, np.float32) for o in self.sess.run(None, {self.name: x})]


class TFLiteModel:
    """Feeds NHWC, quantizes the input and dequantizes the output with the model's own scale/zero point."""

    def __init__(self, path, threads):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            from tflite_runtime.interpreter import Interpreter
        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        self.inp, self.out = self.it.get_input_details()[0], self.it.get_output_details()[0]

    def __call__(self, x):
        x = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
        scale, zero = self.inp["quantization"]
        if self.inp["dtype"] != np.float32 and scale:
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.it.set_tensor(self.inp["index"], x.astype(self.inp["dtype"]))
        self.it.invoke()
        return self._get(self.out)

    def _get(self, detail):
        y = self.it.get_tensor(detail["index"])
        scale, zero = detail["quantization"]
        return ((y.astype(np.float32) - zero) * scale) if detail["dtype"] != np.float32 and scale else y

    def outputs(self, x):
        """Every output, float32, 4-D ones in NCHW as the ONNX model gives them (postprocess.to_nchw)."""
        import postprocess

        self(x)
        in_hw = tuple(self.inp["shape"][1:3]) if len(self.inp["shape"]) == 4 else None
        return [postprocess.to_nchw(np.asarray(self._get(d), np.float32), in_hw)
                for d in self.it.get_output_details()]


def time_runs(model, x, runs):
    """Latencies (ms) of `runs` calls after 5 warm-up calls."""
    for _ in range(5):
        model(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def timing_json(times, threads, entry):
    """One machine-readable line: p50/p90/mean in ms, what ran and where."""
    import platform

    runtime = "onnxruntime" if entry["format"] == "onnx" else "litert"
    try:
        from importlib.metadata import version
        runtime_version = version(runtime if runtime == "onnxruntime" else "ai-edge-litert")
    except Exception:
        runtime_version = None
    return json.dumps({"p50_ms": round(float(np.percentile(times, 50)), 4),
                       "p90_ms": round(float(np.percentile(times, 90)), 4),
                       "mean_ms": round(float(np.mean(times)), 4), "runs": len(times), "threads": threads,
                       "format": entry["format"], "file": entry["file"], "runtime": runtime,
                       "runtime_version": runtime_version, "machine": platform.machine(),
                       "python": platform.python_version()})


def load_model(manifest, threads, fmt=None):
    entries = manifest["models"]
    for entry in entries:
        if fmt and entry["format"] != fmt:
            continue
        cls = OnnxModel if entry["format"] == "onnx" else TFLiteModel
        try:
            return entry, cls(HERE / entry["file"], threads)
        except ImportError:
            continue
    sys.exit("no runtime for this bundle: pip install onnxruntime (for .onnx) or ai-edge-litert (for .tflite)")


def print_task(task, outs, labels, as_json):
    """Detections (boxes in model-input pixels, best first) or the mask's class areas, decoded by
    postprocess.py: the code edgepack's validation used."""
    import postprocess

    def name(c):
        return labels[c] if labels and c < len(labels) else str(c)

    if task == "detect":
        det = postprocess.detections(outs)[0]
        rows = [{"class": int(c), "name": name(int(c)), "score": round(float(s), 4),
                 "box": [round(float(v), 2) for v in b]}
                for b, s, c in zip(det["boxes"], det["scores"], det["classes"])]  # noqa: B905 (old Pythons)
        if as_json:
            print(json.dumps({"detections": rows}))
        for r in rows if not as_json else []:
            print(f"{r['score']:8.4f}  {r['name']:<16} x1 {r['box'][0]:.1f} y1 {r['box'][1]:.1f} "
                  f"x2 {r['box'][2]:.1f} y2 {r['box'][3]:.1f}")
        return
    mask = postprocess.masks(outs[0])[0]
    counts = np.bincount(mask.ravel())
    rows = [{"class": c, "name": name(c), "pixels": int(n), "fraction": round(float(n) / mask.size, 4)}
            for c, n in enumerate(counts) if n]
    if as_json:
        print(json.dumps({"mask_shape": list(mask.shape), "classes": rows}))
    for r in rows if not as_json else []:
        print(f"{100 * r['fraction']:6.2f} %  {r['name']}")


def main():
    manifest = json.loads((HERE / "manifest.json").read_text())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", help="image file to classify")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="detect/segment bundles: one JSON line of results")
    parser.add_argument("--time", type=int, default=0, metavar="N", help="time N runs after 5 warm-up runs")
    parser.add_argument("--threads", type=int, default=manifest["runtime"]["threads"])
    parser.add_argument("--format", choices=sorted({m["format"] for m in manifest["models"]}))
    parser.add_argument("--golden", action="store_true", help="check the stored golden input/output")
    parser.add_argument("--time-golden", type=int, default=0, metavar="N",
                        help="time N runs on the golden input (no image needed); print one JSON line")
    args = parser.parse_args()
    entry, model = load_model(manifest, args.threads, args.format)
    if args.time_golden:
        golden = np.load(HERE / manifest["golden"]["file"])
        print(timing_json(time_runs(model, golden["input"], args.time_golden), args.threads, entry))
        return
    if args.golden:
        golden = np.load(HERE / manifest["golden"]["file"])
        diff = float(np.max(np.abs(model(golden["input"]) - golden[entry["format"]])))
        print(f"golden max abs diff {diff:.6g} (tolerance {manifest['golden']['tolerance']})")
        sys.exit(0 if diff <= manifest["golden"]["tolerance"] else 1)
    if not args.image:
        parser.error("give an image (or --golden)")
    x = preprocess(args.image, manifest["preprocess"], manifest["inputs"][0]["shape"])
    labels = manifest.get("labels")
    task = (manifest.get("stages", {}).get("task") or {}).get("name")
    if task in ("detect", "segment"):
        print_task(task, model.outputs(x), labels, args.json)
    else:
        scores = model(x)[0].reshape(-1)
        for i in np.argsort(-scores)[: args.top]:
            print(f"{scores[i]:10.4f}  {labels[i] if labels else i}")
    if args.time:
        times = time_runs(model, x, args.time)
        print(f"latency over {args.time} runs: p50 {np.percentile(times, 50):.2f} ms, "
              f"p90 {np.percentile(times, 90):.2f} ms ({args.threads} threads, {entry['format']})")


if __name__ == "__main__":
    main()
