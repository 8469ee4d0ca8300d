#!/usr/bin/env python3
"""Run this edgepack bundle on the device: one runner for every bundle. What it reads and what it prints come from
manifest.json: "preprocess" says the input kind (an image, or text with the bundle's tokenizer.json) and
"stages.task" the output kind (classes, detections or a segmentation mask).

Needs numpy plus the model's runtime (onnxruntime for .onnx, ai_edge_litert or tflite_runtime for .tflite), and
pillow for image bundles or tokenizers for text bundles. No torch, no transformers.

    python3 run.py photo.jpg                  # image classifier: top-5 classes (detectors: boxes; segmenters:
                                              #   class areas)
    python3 run.py photo.jpg --score-threshold 0.5  # detectors: boxes scoring 0.5 or more (default 0.3), x1 y1
                                              #   x2 y2 in photo.jpg's own pixels (--model-frame: the model
                                              #   input's pixels, after resize and centre crop)
    python3 run.py scene.jpg --mask-out mask.png  # segmenters: the class mask as a PNG in scene.jpg's pixels
    python3 run.py "WINNER! Claim your prize" # text classifier: one JSON line of label scores
    python3 run.py "A man sleeps" --pair "A person rests"   # a sentence-pair classifier: the two texts as a pair
    python3 run.py inputs.npz                 # a model with several inputs: one sample of each, by input name
    python3 run.py --file inputs.txt          # one image path or sentence per line; one JSON line each (an
                                              #   unreadable one: its "error"; the others still run, exit 2)
    python3 run.py photo.jpg --time 100       # also p50/p90 latency over 100 runs, ms
    python3 run.py --golden                   # run the stored golden input, compare with the stored output
    python3 run.py --time-golden 100          # time 100 runs on the golden input; one JSON line, ms
    python3 run.py photo.jpg --all-outputs    # also every output's values (an embedding, a second head), in
                                              #   the manifest's output order; with --json as JSON lists
    python3 run.py photo.jpg --out emb.npz    # save the outputs (.npz: output0, output1, ...; one row per
                                              #   input, --file stacks them); --save is the same option
    python3 run.py --batch in.npz --out out.npz   # every sample of a saved feed {input name: (N, ...)} as one
                                              #   input; outputs saved as output0 (--all-outputs: every one)
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


# --- inputs: a feed is {input name: array}; image bundles have one input, "input" ---------------------------


MAX_RESIZED_PIXELS = 16_000_000  # edgepack's data.MAX_RESIZED_PIXELS


def _window(pre, shape):
    """(crop width, crop height, short-side resize) for a model input (N, C, H, W): edgepack's data.crop_window."""
    height, width = int(shape[-2]), int(shape[-1])
    crop_h = pre["crop"] or height
    crop_w = max(1, round(crop_h * width / height))  # the crop has the input's aspect ratio
    return crop_w, crop_h, pre["resize"] or int(round(crop_h / 0.875))


def _eight_bit(img):
    """edgepack's data._eight_bit: a 16-bit or 32-bit integer greyscale image rescaled to 0-255 (Pillow's convert()
    clips it at 255), a float one by 255 when its values are 0-1."""
    from PIL import Image

    if img.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return img
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8))


def load_image(path, pre, shape):
    """(model input (1, C, H, W) float32, the image's (width, height)): the same steps as edgepack's
    data.preprocess_image: resize short side, centre crop, scale, normalise."""
    from PIL import Image, ImageOps

    height, width = int(shape[-2]), int(shape[-1])
    crop_w, crop_h, resize = _window(pre, shape)
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:  # an input that cannot be read, as a corrupt one: --file goes on
        raise ValueError(f"{path}: too large to read safely ({exc}); downscale it") from None
    with img:
        try:  # a phone photo upright (its EXIF orientation), as edgepack read the photos it validated on
            img = ImageOps.exif_transpose(img)
        except Exception:  # broken EXIF: as stored, as edgepack does
            pass
        img = _eight_bit(img).convert("L" if pre["channel_order"] == "L" else "RGB")
        size = img.size
        scale = max(resize * crop_w / crop_h / img.size[0], resize / img.size[1])
        rw, rh = max(crop_w, round(img.size[0] * scale)), max(crop_h, round(img.size[1] * scale))
        left, top = (rw - crop_w) // 2, (rh - crop_h) // 2
        if rw * rh > MAX_RESIZED_PIXELS:  # a 1 x 4,000 strip: only the crop's region (edgepack's data._resize_crop)
            fx, fy = size[0] / rw, size[1] / rh
            img = img.resize((crop_w, crop_h), Image.Resampling.BILINEAR,
                             box=(left * fx, top * fy, (left + crop_w) * fx, (top + crop_h) * fy))
        else:
            img = img.resize((rw, rh), Image.Resampling.BILINEAR).crop((left, top, left + crop_w, top + crop_h))
        if (crop_w, crop_h) != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    if pre["channel_order"] == "BGR":
        arr = arr[..., ::-1]
    arr = (arr * pre["scale"] - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None], dtype=np.float32), size


def preprocess(path, pre, shape):
    """An image file -> (1, C, H, W) float32, as edgepack's data.preprocess_image makes it."""
    return load_image(path, pre, shape)[0]


def geometry(size, pre, shape):
    """(sx, sy, left, top, fx, fy): load_image maps a point x of an image of ``size`` (width, height) to
    x' = (x * sx - left) * fx in the model input (y alike), as edgepack's labels.geometry says for the labels
    validation scores against."""
    height, width = int(shape[-2]), int(shape[-1])
    crop_w, crop_h, resize = _window(pre, shape)
    scale = max(resize * crop_w / crop_h / size[0], resize / size[1])
    rw, rh = max(crop_w, round(size[0] * scale)), max(crop_h, round(size[1] * scale))
    return rw / size[0], rh / size[1], (rw - crop_w) // 2, (rh - crop_h) // 2, width / crop_w, height / crop_h


def to_image(boxes, size, pre, shape):
    """(M, 4) xyxy boxes in model-input pixels -> the image's own pixels (the resize and centre crop undone),
    clipped to the image (width, height) = ``size``."""
    sx, sy, left, top, fx, fy = geometry(size, pre, shape)
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip((b[:, [0, 2]] / fx + left) / sx, 0, size[0])
    b[:, [1, 3]] = np.clip((b[:, [1, 3]] / fy + top) / sy, 0, size[1])
    return b


class ImageReader:
    """An image file -> {"input": (1, C, H, W) float32}, preprocessed as the manifest says."""

    names = ["input"]

    def __init__(self, manifest):
        first = manifest["inputs"][0]
        shape = first["shape"]  # a TFLite model's is NHWC: preprocess takes N, C, H, W
        self.pre = manifest["preprocess"]
        self.shape = [shape[0], shape[3], shape[1], shape[2]] if first.get("layout") == "NHWC" else shape
        self.size = None  # the last image's (width, height)

    def __call__(self, path):
        x, self.size = load_image(path, self.pre, self.shape)
        return {"input": x}


class TextReader:
    """A sentence -> {name: (1, L) int64}: tokenizer.json with truncation and right padding to a fixed length."""

    def __init__(self, manifest):
        from tokenizers import Tokenizer

        pre = manifest["preprocess"]
        self.names = list(pre["model_input_names"])
        self.length = int(pre["max_length"])
        self.tok = Tokenizer.from_file(str(HERE / pre["tokenizer"]))
        self.tok.enable_truncation(self.length, direction=pre.get("truncation_side", "right"))
        self.tok.enable_padding(length=self.length, pad_id=int(pre.get("pad_id", 0)),
                                pad_token=pre.get("pad_token", "[PAD]"), pad_type_id=int(pre.get("pad_type_id", 0)),
                                direction=pre.get("padding_side", "right"))

    def __call__(self, text):
        enc = self.tok.encode(*text) if isinstance(text, tuple) else self.tok.encode(text)  # a (text, pair) tuple
        self.truncated = bool(enc.overflowing)  # the text was longer than the model's max_length tokens
        arrays = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        return {n: np.asarray([arrays[n]], dtype=np.int64) for n in self.names}


class TensorsReader:
    """An .npz (or, for a one-input model, .npy) holding each input by name, already preprocessed -> {name:
    (1, ...)}: one sample, with or without its batch dimension; dtypes as the model takes them."""

    def __init__(self, manifest):
        self.specs = list(manifest["preprocess"]["inputs"])
        self.names = [s["name"] for s in self.specs]

    def __call__(self, path):
        saved = np.load(path, allow_pickle=False)
        if isinstance(saved, np.ndarray):  # .npy: the only input
            arrays = {self.names[0]: saved} if len(self.names) == 1 else {}
        else:
            with saved:
                arrays = {n: saved[n] for n in saved.files}
        missing = [n for n in self.names if n not in arrays]
        if missing:
            raise ValueError(f"{path} has no array for input {', '.join(missing)} (found: "
                             f"{', '.join(sorted(arrays)) or 'nothing'}); save each input by name: "
                             f"numpy.savez(path, **{{{', '.join(repr(n) + ': ...' for n in self.names)}}})")
        feed = {}
        for spec in self.specs:
            a, want = arrays[spec["name"]], list(spec["shape"])
            if list(a.shape) == want[1:]:
                a = a[None]
            if list(a.shape[1:]) != want[1:] or a.shape[0] != 1:
                hint = " (several samples: use --batch IN.npz --out OUT.npz)" if list(a.shape[1:]) == want[1:] else ""
                raise ValueError(f"{path}: input {spec['name']} has shape {list(a.shape)}, the model takes "
                                 f"{want}{hint}")
            feed[spec["name"]] = np.ascontiguousarray(a, dtype=spec["dtype"])
        return feed


def input_kind(manifest):
    kind = (manifest.get("preprocess") or {}).get("kind")
    return kind if kind in ("text", "tensors") else "image"


def input_names(manifest):
    """The golden.npz keys holding the model's inputs."""
    kind = input_kind(manifest)
    if kind == "tensors":
        return [s["name"] for s in manifest["preprocess"]["inputs"]]
    return list(manifest["preprocess"]["model_input_names"]) if kind == "text" else ["input"]


def what_to_give(kind):
    """What the positional input is, for messages."""
    return {"text": "a sentence", "tensors": "an .npz of the inputs"}.get(kind, "an image")


def _match(tensor_name, feed):
    """The feed entry a runtime input means: the only one, the same name, or the longest name inside it
    (TFLite names inputs like 'serving_default_input_ids:0')."""
    if len(feed) == 1:
        return next(iter(feed))
    if tensor_name in feed:
        return tensor_name
    for name in sorted(feed, key=len, reverse=True):
        if name in tensor_name:
            return name
    sys.exit(f"model input {tensor_name!r} matches none of {sorted(feed)}")


# --- runtimes: model(feed) -> first output; model.outputs(feed) -> every output (see as_output) -------------


def as_output(y):
    """An output as run.py gives it: an integer or bool one (class ids, an in-graph argmax, a count) in its own
    dtype, a float (or dequantized) one as float32 (every output was cast to float32: --out saved class ids as
    floats)."""
    y = np.asarray(y)
    return y if y.dtype.kind in "iub" else y.astype(np.float32, copy=False)


def _arch():
    import platform

    machine = platform.machine().lower()
    return "x86_64" if machine in ("x86_64", "amd64") else "aarch64" if machine in ("aarch64", "arm64") else machine


class OnnxModel:
    def __init__(self, path, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        meta = self.sess.get_modelmeta().custom_metadata_map
        if meta.get("edgepack.int8_arithmetic") == "reference" and meta.get("edgepack.target_arch") != _arch():
            # an INT8 model for another ISA (an ARM board's, run on an x86 PC): exact integer arithmetic, as its
            # device computes it and as edgepack validated it, not this machine's fused kernels (which may saturate)
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
            self.sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        types = {"float": np.float32, "float16": np.float16, "double": np.float64, "int8": np.int8,
                 "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "int64": np.int64, "bool": np.bool_}
        self.inputs = {i.name: types.get(i.type[len("tensor("):-1], np.float32) for i in self.sess.get_inputs()}

    def _feed(self, feed):
        return {n: np.asarray(feed[_match(n, feed)]).astype(t, copy=False) for n, t in self.inputs.items()}

    def __call__(self, feed):
        return as_output(self.sess.run(None, self._feed(feed))[0])

    def timed(self, feed):
        """A call running the model on `feed` (converted once, here): what the timing measures."""
        prepared = self._feed(feed)
        return lambda: self.sess.run(None, prepared)

    def outputs(self, feed):
        """Every output (detection heads have several), float32 or its own integer dtype (as_output)."""
        return [as_output(o) for o in self.sess.run(None, self._feed(feed))]


class TFLiteModel:
    """Feeds images NHWC and tokens by name; quantizes float inputs and dequantizes outputs with the model's
    own scale/zero point."""

    def __init__(self, path, threads):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            from tflite_runtime.interpreter import Interpreter
        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        self.inputs, self.outs = self.it.get_input_details(), self._output_details()
        self.out = self.outs[0]

    def _output_details(self):
        """Outputs in the source model's order: the serving signature's output_0, output_1, ... (the tensor
        index order of get_output_details is the converter's; edgepack's TFLite runner orders them alike)."""
        details = self.it.get_output_details()
        try:
            sig = self.it._get_full_signature_list()["serving_default"]["outputs"]
        except (AttributeError, KeyError):
            return details
        order = sorted((int(k.rsplit("_", 1)[1]), i) for k, i in sig.items()
                       if k.startswith("output_") and k.rsplit("_", 1)[1].isdigit())
        by_index = {d["index"]: d for d in details}
        if len(order) != len(details) or {i for _, i in order} != set(by_index):
            return details
        return [by_index[i] for _, i in order]

    def _prepare(self, feed):
        """(tensor index, array) per input: channels-last, in the input's dtype (quantized when it is integer)."""
        found = []
        for d in self.inputs:
            x = np.asarray(feed[_match(d["name"], feed)])
            x = np.moveaxis(x, 1, -1) if x.ndim >= 3 else x  # channels-last, as onnx2tf's model takes N,C,... inputs
            scale, zero = d["quantization"]
            if x.dtype.kind == "f" and np.dtype(d["dtype"]).kind in "iu" and scale:
                info = np.iinfo(d["dtype"])
                x = np.clip(np.round(x / scale) + zero, info.min, info.max)  # as edgepack validated it
            found.append((d["index"], np.ascontiguousarray(x, d["dtype"])))
        return found

    def _set(self, feed):
        for index, x in self._prepare(feed):
            self.it.set_tensor(index, x)
        self.it.invoke()

    def timed(self, feed):
        """A call running the model as an app does: the input already in its dtype and layout, raw outputs."""
        prepared, outs = self._prepare(feed), [d["index"] for d in self.outs]

        def call():
            for index, x in prepared:
                self.it.set_tensor(index, x)
            self.it.invoke()
            for index in outs:
                self.it.get_tensor(index)

        return call

    def _get(self, detail):
        y = self.it.get_tensor(detail["index"])
        scale, zero = detail["quantization"]
        return ((y.astype(np.float32) - zero) * scale) if detail["dtype"] != np.float32 and scale else y

    def __call__(self, feed):
        """The first output (float32 or its own integer dtype: as_output); a 4-D one in NCHW, as outputs() and
        edgepack's own runner give it."""
        self._set(feed)
        y = as_output(self._get(self.out))
        return self._nchw(y) if y.ndim == 4 else y

    def _nchw(self, y):
        import postprocess  # beside run.py in bundles whose outputs are maps (segmentation, detection)

        shape = self.inputs[0]["shape"]
        return postprocess.to_nchw(y, tuple(shape[1:3]) if len(shape) == 4 else None)

    def outputs(self, feed):
        """Every output (float32 or its own integer dtype: as_output), 4-D ones in NCHW as the ONNX model gives
        them (postprocess.to_nchw). Only a 4-D output needs postprocess.py: a classifier's bundle has none."""
        self._set(feed)
        outs = [as_output(self._get(d)) for d in self.outs]
        return [self._nchw(y) if y.ndim == 4 else y for y in outs]


def load_model(manifest, threads, fmt=None):
    for entry in manifest["models"]:
        if fmt and entry["format"] != fmt:
            continue
        cls = OnnxModel if entry["format"] == "onnx" else TFLiteModel
        try:
            return entry, cls(HERE / entry["file"], threads)
        except ImportError:
            continue
    sys.exit("no runtime for this bundle: pip install onnxruntime (for .onnx) or ai-edge-litert (for .tflite)")


# --- timing --------------------------------------------------------------------------------------------------


def time_runs(model, feed, runs):
    """Latencies (ms) of `runs` calls after 5 warm-up calls. The input is put in the model's dtype and layout
    once, before timing (an app feeds the model its own dtype), as edgepack's host measurement does."""
    call = model.timed(feed)
    for _ in range(5):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
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


# --- outputs: chosen by the task (and, for classes, how the input is shown) --------------------------------


def _name(labels, c):
    return labels[c] if labels and c < len(labels) else str(c)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -80, 80)))


def detect_result(outs, labels, score_threshold, frame, box_format="auto"):
    """Detections scoring at least ``score_threshold``, boxes x1, y1, x2, y2. ``frame``: (image size, preprocess
    record, model input shape NCHW, model_frame); boxes are in the image's own pixels (the preprocessing undone,
    clipped to the image) or, with model_frame, in the model input's pixels as the model gives them (the frame
    edgepack's validation scores them in, after mapping the labels into it)."""
    import postprocess

    size, pre, shape, model_frame = frame
    det = postprocess.detections(outs, score_threshold, box_format=box_format)[0]
    in_size = [int(shape[-1]), int(shape[-2])]
    boxes = det["boxes"] if model_frame else to_image(det["boxes"], size, pre, shape)
    seen = to_image([[0, 0, in_size[0], in_size[1]]], size, pre, shape)[0]
    return {"box_frame": "model_input" if model_frame else "image", "image_size": list(size),
            "model_input_size": in_size, "model_sees": [round(float(v), 2) for v in seen],
            "score_threshold": score_threshold,
            "detections": [{"class": int(c), "name": _name(labels, int(c)), "score": round(float(s), 4),
                            "box": [round(float(v), 2) for v in b]}
                           for b, s, c in zip(boxes, det["scores"], det["classes"])]}  # noqa: B905 (old Pythons)


def result(task, kind, model, feed, item, labels, top, score_threshold=None, frame=None):
    """What one input gives, as a dict: the output code is chosen by the task, and for classes by the input
    (detectors: see detect_result)."""
    name = task.get("name") or "classify"
    if name in ("detect", "segment"):
        import postprocess

        outs = model.outputs(feed)
        if name == "detect":
            return detect_result(outs, labels, postprocess.DISPLAY_SCORE_THRESHOLD if score_threshold is None
                                 else score_threshold, frame, task.get("box_format") or "auto")
        threshold = task.get("prob_threshold")
        mask = postprocess.masks(outs[0], postprocess.PROB_THRESHOLD if threshold is None else threshold)[0]
        counts = np.bincount(mask.ravel())
        out = {"mask_shape": list(mask.shape),
               "classes": [{"class": c, "name": _name(labels, c), "pixels": int(n),
                            "fraction": round(float(n) / mask.size, 4)} for c, n in enumerate(counts) if n]}
        if frame is not None:  # (image size, preprocess, input shape): what part of the photo the mask covers
            size, pre, shape = frame[:3]
            seen = to_image([[0, 0, int(shape[-1]), int(shape[-2])]], size, pre, shape)[0]
            out.update(image_size=list(size), model_sees=[round(float(v), 2) for v in seen])
            out["_mask"] = mask
        return out
    if name == "generic":  # a sentence's result names it; a one-number output (a regression head) gives its value
        said = _texts(item) if kind == "text" else {}
        return {**said, "outputs": [{"index": i, "shape": list(o.shape), "min": round(float(o.min()), 6),
                                     "max": round(float(o.max()), 6), "mean": round(float(o.mean()), 6),
                                     **({"value": round(float(o.reshape(-1)[0]), 6)} if o.size == 1 else {})}
                                    for i, o in enumerate(model.outputs(feed))]}
    scores = np.asarray(model(feed), np.float32)[0].reshape(-1)
    if kind == "text":
        multi = bool(task.get("multi_label"))  # each class on its own: a sigmoid each, every class at 0.5 or more
        probs = sigmoid(scores) if multi else softmax(scores)
        names = [_name(labels, i) for i in range(len(probs))]
        out = {**_texts(item), "label": names[int(np.argmax(probs))],
               "scores": {n: round(float(p), 6) for n, p in zip(names, probs)}}  # noqa: B905 (old Pythons)
        if multi:
            out["labels"] = [n for n, p in zip(names, probs) if p >= 0.5]  # noqa: B905 (old Pythons)
        return out
    probs = probabilities(scores)
    return {"top": [{"class": int(i), "name": _name(labels, int(i)), "score": round(float(scores[i]), 4),
                     "probability": round(float(probs[i]), 6)} for i in np.argsort(-scores)[:top]]}


def _texts(item):
    """A text input as its result names it: the text, and a sentence pair's second text."""
    return {"text": item[0], "text_pair": item[1]} if isinstance(item, tuple) else {"text": item}


def probabilities(scores):
    """A classifier's scores as probabilities: the scores themselves when they already are (a softmax in the
    model: each in 0-1, summing to 1), else their softmax (logits). The "score" is the model's own number."""
    if scores.min() >= 0 and scores.max() <= 1 and abs(float(scores.sum()) - 1.0) < 1e-3:
        return scores
    return softmax(scores.astype(np.float64))


def save_mask(mask, res, dst, item=None):
    """Write a segmenter's class mask as an 8-bit PNG of class ids in the photo's own pixels: the model's mask
    scaled back over the part of the photo it sees (nearest neighbour), 255 ("not seen", the usual ignore value)
    where the centre crop cut the photo. With several inputs, each file is named after its input."""
    from PIL import Image

    w, h = res["image_size"]
    x1, y1, x2, y2 = (int(round(v)) for v in res["model_sees"])
    canvas = Image.new("L", (w, h), 255)
    small = Image.fromarray(np.asarray(mask, np.uint8), "L")
    canvas.paste(small.resize((max(1, x2 - x1), max(1, y2 - y1)), Image.Resampling.NEAREST), (x1, y1))
    path = Path(dst)
    if item is not None:
        path = path.with_name(f"{path.stem}_{Path(item).stem}{path.suffix or '.png'}")
    canvas.save(path, format="PNG")
    return str(path)


def output_values(outs, entry):
    """Every output of one input with its values (run.py --all-outputs): index, name (the manifest's), shape,
    min/max/mean and the values as nested lists (as_output: float32, dequantized, or integer)."""
    names = [t.get("name") for t in entry.get("outputs", [])]
    return [{"index": i, "name": names[i] if len(names) == len(outs) else None, "shape": list(o.shape),
             "min": round(float(o.min()), 6), "max": round(float(o.max()), 6), "mean": round(float(o.mean()), 6),
             "values": o.tolist()} for i, o in enumerate(outs)]


def show(res):
    """The result as lines a person reads."""
    for r in res.get("top", []):
        print(f"{r['score']:10.4f}  {r['probability']:7.2%}  {r['name']}")
    if "detections" in res:
        w, h = res["image_size"]
        x1, y1, x2, y2 = res["model_sees"]
        mw, mh = res["model_input_size"]
        where = (f"the image's own pixels ({w} x {h})" if res["box_frame"] == "image" else
                 f"the model input's pixels ({mw} x {mh}; --model-frame)")
        n = len(res["detections"])
        print(f"{n} detection{'' if n == 1 else 's'} scoring {res['score_threshold']:g} or more; boxes x1 y1 x2 y2 "
              f"in {where}; the model sees x {x1:.0f}-{x2:.0f}, y {y1:.0f}-{y2:.0f} of the {w} x {h} image, "
              f"scaled to {mw} x {mh}")
    for r in res.get("detections", []):
        print(f"{r['score']:8.4f}  {r['name']:<16} x1 {r['box'][0]:.1f} y1 {r['box'][1]:.1f} "
              f"x2 {r['box'][2]:.1f} y2 {r['box'][3]:.1f}")
    if "classes" in res and "model_sees" in res:
        x1, y1, x2, y2 = res["model_sees"]
        w, h = res["image_size"]
        print(f"share of the model's {res['mask_shape'][1]} x {res['mask_shape'][0]} mask per class; the model sees "
              f"x {x1:.0f}-{x2:.0f}, y {y1:.0f}-{y2:.0f} of the {w} x {h} image"
              + (f"; mask written to {res['mask_file']}" if res.get("mask_file") else ""))
    for r in res.get("classes", []):
        print(f"{100 * r['fraction']:6.2f} %  {r['name']}")
    if "text" in res and "label" not in res:
        print(json.dumps({k: v for k, v in res.items() if k in ("text", "text_pair")}, ensure_ascii=False))
    for r in res.get("outputs", []):
        name = f" ({r['name']})" if r.get("name") else ""
        print(f"output {r['index']}{name}: shape {r['shape']}  value {r['value']:.6g}" if "value" in r else
              f"output {r['index']}{name}: shape {r['shape']}  min {r['min']:.4g}  max {r['max']:.4g}  "
              f"mean {r['mean']:.4g}")
        if "values" in r:
            print(np.array2string(np.asarray(r["values"], np.float32), threshold=sys.maxsize, max_line_width=100,
                                  precision=6, separator=", "))
    if "label" in res:
        print(json.dumps(res, ensure_ascii=False))


def run_batch(model, src, dst, all_outputs=False):
    """Run each sample of a saved feed (src: .npz of {input name: (N, ...)}, as the model takes them) as one input
    after one warm-up run; save the first output (every output with all_outputs) of each, stacked, to dst (.npz:
    output0, output1, ...).

    Prints one flushed line after the warm-up and after each input, and nothing else (edgepack's emulated device
    counts the instructions executed between two such lines).
    """
    with np.load(src) as saved:
        feeds = {n: saved[n] for n in saved.files}
    count = len(next(iter(feeds.values())))

    def run(i):
        feed = {n: a[i:i + 1] for n, a in feeds.items()}
        return model.outputs(feed) if all_outputs else [model(feed)]

    run(0)
    print("warm-up done", flush=True)
    outs = []
    for i in range(count):
        outs.append(run(i))
        print(f"input {i} done", flush=True)
    np.savez(dst, **{f"output{k}": np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))})


def golden_tolerance(golden, fmt):
    """(tolerance, why): the stored one on the build host's ISA; on another (the device's own kernels, which
    round INT8 differently) the wider one the build measured on the emulated device, when the bundle has it."""
    device = (golden.get("device_tolerance") or {}).get(fmt)
    if device and golden.get("host_arch") and golden["host_arch"] != _arch():
        return device["value"], f"{_arch()} kernels: {device['basis']}"
    return golden["tolerance"], "same ISA as the build host"


def check_golden(manifest, model, entry):
    """Run the stored golden input; exit 1 when the output differs from the stored one beyond the tolerance."""
    golden = np.load(HERE / manifest["golden"]["file"])
    diff = float(np.max(np.abs(model({n: golden[n] for n in input_names(manifest)}) - golden[entry["format"]])))
    tolerance, why = golden_tolerance(manifest["golden"], entry["format"])
    print(f"golden max abs diff {diff:.6g} (tolerance {tolerance:g}: {why})")
    sys.exit(0 if diff <= tolerance else 1)


def main():
    manifest = json.loads((HERE / "manifest.json").read_text())
    kind = input_kind(manifest)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", help="a sentence (text bundles), an image file (image bundles) or an "
                        ".npz of the inputs by name (bundles of models with several inputs)")
    parser.add_argument("--file", help="one input per line of this UTF-8 file (sentences, image or .npz paths)")
    parser.add_argument("--top", type=int, default=5, help="image classifiers: how many classes to print")
    parser.add_argument("--json", action="store_true", help="one JSON line of results per input")
    parser.add_argument("--time", type=int, default=0, metavar="N", help="time N runs after 5 warm-up runs")
    parser.add_argument("--threads", type=int, default=manifest.get("runtime", {}).get("threads", 1))
    parser.add_argument("--format", choices=sorted({m["format"] for m in manifest["models"]}))
    parser.add_argument("--golden", action="store_true", help="check the stored golden input/output")
    parser.add_argument("--time-golden", type=int, default=0, metavar="N",
                        help="time N runs on the golden input (no input needed); print one JSON line")
    parser.add_argument("--batch", metavar="IN.npz", help="run every sample of a feed saved with numpy "
                        "({input name: (N, ...)}); write the outputs to --out")
    parser.add_argument("--out", "--save", dest="out", metavar="OUT.npz",
                        help="save the outputs to this .npz (output0, output1, ...: the first output, every one "
                        "with --all-outputs; one row per input, stacked over --file's inputs or --batch's samples; "
                        "with --file, 'line' holds each row's line number)")
    parser.add_argument("--all-outputs", action="store_true",
                        help="every output with its values, not only the decoded result (an image or sentence: "
                        "printed, JSON lists with --json; --batch / --out: every output saved, not the first)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    if kind == "text":
        parser.add_argument("--pair", metavar="TEXT", help="a sentence-pair model's second text: INPUT and TEXT "
                            "are tokenized as one pair, as the build's text / text_pair data were")
    if (manifest.get("stages", {}).get("task") or {}).get("name") == "detect":
        import postprocess

        parser.add_argument("--score-threshold", type=float, default=postprocess.DISPLAY_SCORE_THRESHOLD,
                            metavar="S", help="print the boxes scoring at least S, 0-1 (default "
                            f"%(default)s; validation's mAP counts every box from {postprocess.SCORE_THRESHOLD}, "
                            "as COCO evaluation does)")
        parser.add_argument("--model-frame", action="store_true", help="boxes in the model input's pixels "
                            "(after resize and centre crop, as the model outputs them and validation scores them), "
                            "not the image's own")
    if (manifest.get("stages", {}).get("task") or {}).get("name") == "segment":
        parser.add_argument("--mask-out", metavar="PNG", help="write the class mask as an 8-bit PNG of class ids "
                            "in the photo's own pixels (255 where the centre crop cut the photo); with --file, "
                            "one file per input, named after it")
    args = parser.parse_args()
    if not 0 <= getattr(args, "score_threshold", 0) <= 1:
        parser.error(f"--score-threshold {args.score_threshold:g} is not a score: scores are 0-1")
    if args.top < 1:  # --top 0 printed nothing, --top -1 every class but the last (a slice)
        parser.error(f"--top {args.top}: give how many classes to print, 1 or more")
    if args.batch and not args.out:
        parser.error("--batch needs --out")
    if getattr(args, "pair", None) is not None and not args.input:
        parser.error("--pair is the second text of INPUT: give the first as INPUT (not --file)")
    if (args.all_outputs or args.out) and not (args.batch or args.input or args.file):
        parser.error(f"{'--all-outputs' if args.all_outputs else '--out'} needs an input: "
                     + what_to_give(kind) + ", --file or --batch")
    try:
        execute(manifest, kind, args, parser)
    except Exception as exc:  # noqa: BLE001 - one line for a person, the traceback with --debug
        if args.debug:
            raise
        # a missing or unreadable file, not an image, a feed of the wrong shape (ONNX Runtime: InvalidArgument)
        usage = isinstance(exc, (OSError, ValueError)) or type(exc).__name__ == "InvalidArgument"
        parser.exit(2 if usage else 1, f"{parser.prog}: error: {exc} (--debug shows the traceback)\n")


def execute(manifest, kind, args, parser):
    """What main() does once its arguments are checked."""
    entry, model = load_model(manifest, args.threads, args.format)
    if args.batch:
        run_batch(model, args.batch, args.out, args.all_outputs)
        return
    if args.golden:
        check_golden(manifest, model, entry)
    if args.time_golden:
        golden = np.load(HERE / manifest["golden"]["file"])
        feed = {n: golden[n] for n in input_names(manifest)}
        print(timing_json(time_runs(model, feed, args.time_golden), args.threads, entry))
        return
    if args.file:  # blank lines are skipped; each result names its line, so results still line up with inputs
        # (utf-8-sig: a byte-order mark, as Windows Notepad writes, is not part of the first path)
        items = [(n, t.strip()) for n, t in enumerate(Path(args.file).read_text(encoding="utf-8-sig").splitlines(), 1)
                 if t.strip()]
    elif args.input == "":
        parser.error("the " + ("sentence" if kind == "text" else "file path") + " is empty")
    elif args.input:
        items = [(None, (args.input, args.pair) if getattr(args, "pair", None) else args.input)]
    else:
        parser.error("give " + what_to_give(kind) + ", --file or --golden")
    reader = {"text": TextReader, "tensors": TensorsReader}.get(kind, ImageReader)(manifest)
    failed = run_items(manifest, kind, args, (entry, model), reader, items)
    ran = [item for line, item in items if line not in failed]
    if args.time and ran:
        times = time_runs(model, reader(ran[0]), args.time)
        print(f"latency over {args.time} runs: p50 {np.percentile(times, 50):.2f} ms, "
              f"p90 {np.percentile(times, 90):.2f} ms ({args.threads} threads, {entry['format']})")
    if failed:  # every other line ran; the exit status still says that some did not
        first = next(iter(failed.items()))
        parser.exit(2, f"{parser.prog}: error: {len(failed)} of {len(items)} inputs of {args.file} could not be "
                       f"read (line {first[0]}: {first[1]}){'; the others ran' if ran else ''}\n")

def run_items(manifest, kind, args, loaded, reader, items):
    """Print each input's result (every output's values with --all-outputs); save the outputs with --out. An input
    of --file that cannot be read (a corrupt photo, a missing file) gets an "error" line and the others still run
    (one bad photo in a list of thousands stopped the run, and --out saved nothing); returns {line: error}."""
    entry, model = loaded
    task = manifest.get("stages", {}).get("task") or {}   # name, a segmenter's prob_threshold, a box_format
    labels = manifest.get("labels")
    saved, lines, failed = [], [], {}
    for line, item in items:
        try:
            feed = reader(item)
        except (OSError, ValueError) as exc:  # what main() reports as a usage error for a single input
            if line is None or args.debug:
                raise
            failed[line] = str(exc)
            err = {"line": line, "error": str(exc)}
            print(json.dumps(err if kind == "text" else {"input": item, **err}, ensure_ascii=False))
            continue
        frame = ((reader.size, reader.pre, reader.shape, getattr(args, "model_frame", False))
                 if task.get("name") in ("detect", "segment") and kind == "image" else None)
        res = result(task, kind, model, feed, item, labels, args.top, getattr(args, "score_threshold", None), frame)
        mask = res.pop("_mask", None)
        if mask is not None and getattr(args, "mask_out", None):
            res["mask_file"] = save_mask(mask, res, args.mask_out, item if len(items) > 1 else None)
        if args.all_outputs or args.out:
            outs = model.outputs(feed)
            saved.append(outs if args.all_outputs else outs[:1])
            lines.append(line)
            if args.all_outputs:  # the values too: a generic model's result has only each output's statistics
                res = {**res, "outputs": output_values(outs, entry)}
        if getattr(reader, "truncated", False):
            res = {**res, "truncated_to_tokens": reader.length}  # only the first max_length tokens were read
        if line is not None:
            res = {"line": line, **res}
        if args.json or args.file:
            print(json.dumps(res if kind == "text" else {"input": item, **res}, ensure_ascii=False))
        else:
            show(res)
    if args.out and saved:  # --file: "line" gives each row's line, rows of unreadable inputs being left out
        np.savez(args.out, **{f"output{k}": np.concatenate([o[k] for o in saved]) for k in range(len(saved[0]))},
                 **({"line": np.asarray(lines, np.int64)} if args.file else {}))
        if not (args.json or args.file):
            print(f"saved {len(saved[0])} output{'' if len(saved[0]) == 1 else 's'} of {len(saved)} "
                  f"input{'' if len(saved) == 1 else 's'} to {args.out}")
    return failed


if __name__ == "__main__":
    main()
