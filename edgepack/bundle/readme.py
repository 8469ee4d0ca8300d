"""README.md for a bundle: how to run it on the device, with the input layout and quantization
written out, and for TFLite a Kotlin snippet for Android's Interpreter."""

from __future__ import annotations

KOTLIN = """\
```kotlin
// build.gradle: implementation("com.google.ai.edge.litert:litert:1.0.1")
val options = Interpreter.Options().apply {{ setNumThreads({threads}) }}   // XNNPACK is on by default
val interpreter = Interpreter(FileUtil.loadMappedFile(context, "model.tflite"), options)

// Input: {in_shape} {in_dtype}, layout {in_layout}. Turn a camera photo upright first (ExifInterface's
// TAG_ORIENTATION, or CameraX's rotationDegrees), as edgepack read the photos it validated on. Then preprocess
// each pixel as the manifest says ({order}; short side resized to {resize} px, centre crop {crop},
// x = (pixel * {scale} - mean) / std per channel, mean {mean}, std {std}), then quantize:
//   q = round(x / {in_scale}) + {in_zero}, clamped to the {in_dtype} range.
val input = ByteBuffer.allocateDirect({in_bytes}).order(ByteOrder.nativeOrder())
// ... input.put(q.toByte()) for every value, H x W x C order ...
val output = ByteBuffer.allocateDirect({out_bytes}).order(ByteOrder.nativeOrder())
interpreter.run(input, output)
// Output: {out_shape} {out_dtype}; dequantize: score = {out_scale} * (q - ({out_zero}))
```"""


KOTLIN_TEXT = """\
```kotlin
// build.gradle: implementation("com.google.ai.edge.litert:litert:1.0.1")
//   and a tokenizer that reads tokenizer.json, e.g. DJL's ai.djl.huggingface:tokenizers (HuggingFaceTokenizer)
val options = Interpreter.Options().apply {{ setNumThreads({threads}) }}
val interpreter = Interpreter(FileUtil.loadMappedFile(context, "model.tflite"), options)
val tokenizer = HuggingFaceTokenizer.builder()   // tokenizer.json carries the vocabulary and lower-casing ({lowercase})
    .optTokenizerPath(File(filesDir, "tokenizer.json").toPath())
    .optMaxLength({max_length}).optPadToMaxLength().optTruncation(true).build()

val enc = tokenizer.encode(text)
{kinds}
// Inputs go by name, never by position (the .tflite orders them alphabetically):
val inputs = arrayOfNulls<Any>(interpreter.inputTensorCount)
{feeds}
val output = {out_alloc}
interpreter.runForMultipleInputsOutputs(inputs, mapOf(0 to output))
// Output: {out_shape} {out_dtype}{out_note}
```"""


#: what run.py imports to run each format (the runtime's pip name: it also takes tflite-runtime for .tflite)
RUNTIME_PACKAGES = {"onnx": "onnxruntime", "tflite": "ai-edge-litert"}


def install_packages(man: dict, fmt: str) -> list[str]:
    """The pip packages run.py needs for format ``fmt``: the runtime, numpy, and pillow (images) or tokenizers
    (text); postprocess.py, when there is one, needs numpy only."""
    reader = {"text": ["tokenizers"], "tensors": []}.get(man["preprocess"].get("kind"), ["pillow"])
    return [RUNTIME_PACKAGES[fmt], "numpy", *reader]


def install_line(man: dict, fmt: str, pinned: bool = True) -> str:
    """`pip install ...` for format ``fmt``, pinned to the versions the bundle was validated with (manifest
    "tools": the build host's) where it records them."""
    tools = man.get("tools") or {}
    return "pip install " + " ".join(f"{p}=={tools[p]}" if pinned and tools.get(p) else p
                                     for p in install_packages(man, fmt))


def _install(man: dict) -> list[str]:
    """The README's install section: a pinned line per shipped format, and the unpinned fallback."""
    fmts = [m["format"] for m in man["models"]]
    files = {m["format"]: m["file"] for m in man["models"]}
    python = (man.get("tools") or {}).get("python")
    lines = ["## Install on the device", "",
             "run.py needs Python 3, numpy"
             + {"text": ", the model's runtime and tokenizers", "tensors": " and the model's runtime"}.get(
                 man["preprocess"].get("kind"), ", the model's runtime and pillow")
             + " (no torch); the versions this bundle was validated with"
             + (f" (on the build host, Python {python})" if python else "") + ":", "", "```"]
    width = max(len(install_line(man, f)) for f in fmts)
    lines += [f"{install_line(man, f):<{width}}  # {files[f]}" for f in fmts]
    lines += ["```", "",
              "Where a pinned version has no wheel for the device's Python or CPU, install the same packages "
              "unpinned (" + ", ".join(f"`{install_line(man, f, pinned=False)}`" for f in fmts) + ") and check "
              "them with `python3 run.py --golden`."
              + (" run.py also takes `tflite-runtime` in place of `ai-edge-litert`." if "tflite" in fmts else ""),
              ""]
    return lines


def _detect_notes(man: dict) -> list[str]:
    """How a detector's run.py prints its boxes (frame, score threshold), or a segmenter's its mask."""
    from edgepack.tasks import postprocess

    task = ((man.get("stages") or {}).get("task") or {}).get("name")
    if task == "segment":
        return ["Segmentation: run.py prints each class's share of the model's mask and which part of the photo "
                "the model sees (the centre crop); `--mask-out mask.png` writes the mask as an 8-bit PNG of class "
                "ids in the photo's own pixels, 255 where the crop cut the photo.", ""]
    if task != "detect":
        return []
    inp = man["models"][0]["inputs"][0]
    shape = [int(d) if isinstance(d, int) else 0 for d in inp["shape"]]
    height, width = (shape[1], shape[2]) if inp.get("layout") == "NHWC" else (shape[-2], shape[-1])
    return [f"Detections: one line per box scoring {postprocess.DISPLAY_SCORE_THRESHOLD} or more (change it with "
            "`--score-threshold S`; validation's mAP counts every box from "
            f"{postprocess.SCORE_THRESHOLD}, as COCO evaluation does), with its box x1 y1 x2 y2 in the photo's own "
            "pixels: the resize and centre crop undone, clipped to the photo. The first line says the photo's size "
            "and which part of it the model sees (the centre crop). `--model-frame` prints the boxes in the model "
            f"input's pixels ({width} x {height}) instead, as the model outputs them and validation scores them; "
            "`--json` gives the same fields (box_frame, image_size, model_sees, score_threshold)."
            + _box_format_note(((man.get("stages") or {}).get("task") or {}).get("box_format")), ""]


def _box_format_note(box_format: str | None) -> str:
    """What the model's candidates are, where the build named (or settled) their layout."""
    notes = {"xyxy": "x1, y1, x2, y2, then class scores",
             "cxcywh": "cx, cy, w, h, then class scores; run.py turns them into corners",
             "yolov5": "cx, cy, w, h, objectness, then class scores (YOLOv5's layout); a box's score is objectness "
                       "x class score, and run.py turns the boxes into corners"}
    return f" The model's candidates are read as {notes[box_format]}." if box_format in notes else ""


def _q(t: dict) -> tuple[str, str]:
    q = t.get("quantization")
    return (f"{q['scale']:.8g}", str(q["zero_point"])) if q else ("1 (float)", "0")


def render(man: dict) -> str:
    """The bundle README text."""
    pre = man["preprocess"]
    if pre.get("kind") == "tensors":
        return _render_tensors(man)
    lines = [*_head(man),
             "```", ('python3 run.py "a sentence" --time 100  # label scores and p50/p90 latency'
                      if pre.get("kind") == "text" else
                      "python3 run.py photo.jpg --time 100     # results and p50/p90 latency"),
             "python3 run.py --file inputs.txt        # one input per line, one JSON line each (unreadable: its error)",
             *(['python3 run.py "a text" --pair "another"  # a sentence-pair model: the two texts as one pair']
               if pre.get("kind") == "text" else []),
             "python3 run.py --golden                  # stored input -> stored output",
             ('python3 run.py "a sentence" --all-outputs --json  # every output\'s values, JSON lists'
              if pre.get("kind") == "text" else
              "python3 run.py photo.jpg --all-outputs --json  # every output's values, JSON lists"),
             "python3 run.py photo.jpg --save out.npz  # the outputs, saved with numpy" if pre.get("kind") != "text"
             else 'python3 run.py --file texts.txt --save out.npz  # the outputs, saved with numpy', "```", "",
             "Every output's values (an embedding, a second head; run.py otherwise prints the decoded result, or "
             "a generic model's shape, min, max and mean): `--all-outputs` prints them, as JSON lists with "
             "`--json`; `--save out.npz` (or `--out`) saves them with numpy as `output0`, `output1`, ... (the "
             "first output, every one with `--all-outputs`), one row per input; outputs in the order listed "
             "below.", ""]
    lines += _detect_notes(man)
    lines += _model_sections(man, _kotlin_text if pre.get("kind") == "text" else _kotlin)
    return "\n".join(lines)


def _head(man: dict) -> list[str]:
    """The README's title, what to check, the install section and the run section's heading."""
    return [f"# {man['name']} for {man['target']['name']}", "",
            "Built by edgepack. The verdict, budgets and measurements are in report.md / report.html and "
            "manifest.json; check every file with `edgepack verify .`.", "", *_install(man),
            "## Run on the device", ""]


def _model_sections(man: dict, kotlin) -> list[str]:
    """Each shipped model's inputs and outputs (shape, dtype, layout, quantization), with ``kotlin``'s LiteRT
    snippet for a .tflite."""
    lines = []
    for m in man["models"]:
        lines += [f"## {m['file']} ({m['format']}, {m['precision']})", ""]
        for kind in ("inputs", "outputs"):
            for t in m[kind]:
                scale, zero = _q(t)
                shared = (f" (shares the file's tensor `{t['tensor']}` with "
                          f"{', '.join(f'`{n}`' for n in t['shares_tensor_with'])})" if t.get("shares_tensor_with")
                          else "")
                lines.append(f"- {kind[:-1]} `{t['name']}`{shared}: shape {t['shape']}, {t['dtype']}, layout "
                             f"{t.get('layout') or '-'}, scale {scale}, zero point {zero}")
        if m["format"] == "tflite":
            lines += ["", kotlin(man, m), ""]
        lines.append("")
    return lines


def _render_tensors(man: dict) -> str:
    """A model with several inputs: run.py reads one .npz holding each input by name, already preprocessed."""
    specs = man["preprocess"]["inputs"]
    saved = ", ".join(f"{s['name']}=<{s['dtype']} {s['shape']}>" for s in specs)
    lines = [*_head(man),
             f"The model takes {len(specs)} inputs, already preprocessed as the build's calibration data was: save "
             f"one sample of each by name with `numpy.savez('inputs.npz', {saved})` (the batch dimension may be "
             "left out).", "",
             "```",
             "python3 run.py inputs.npz --time 100    # each output's shape, min, max, mean; p50/p90 latency",
             "python3 run.py inputs.npz --all-outputs --json  # every output's values, JSON lists",
             "python3 run.py --batch many.npz --out out.npz  # every sample of {input name: (N, ...)} arrays",
             "python3 run.py --golden                  # stored input -> stored output",
             "```", "", "Outputs come in the order listed below.", ""]
    lines += _model_sections(man, _kotlin_tensors)
    return "\n".join(lines)


def _kotlin_tensors(man: dict, m: dict) -> str:
    feeds = []
    for t in m["inputs"]:
        scale, zero = _q(t)
        how = (f"quantized: q = round(x / {scale}) + ({zero})" if t.get("quantization") else "float32 values")
        feeds.append(f'inputs[interpreter.getInputIndex("{t["name"]}")] = buffer_{len(feeds)}  '
                     f'// {t["shape"]} {t["dtype"]}, {how}')
    outs, allocs = [], []
    for k, t in enumerate(m["outputs"]):
        scale, zero = _q(t)
        deq = f"; dequantize: y = {scale} * (q - ({zero}))" if t.get("quantization") else ""
        outs.append(f"// output {k} `{t['name']}`: {t['shape']} {t['dtype']}{deq}")
        allocs.append(f"{k} to ByteBuffer.allocateDirect({_nbytes(t)}).order(ByteOrder.nativeOrder())")
    outs.append(f"val outputs = mapOf({', '.join(allocs)})")
    return ("```kotlin\n// LiteRT (org.tensorflow.lite.Interpreter): one direct ByteBuffer per input, native byte "
            f"order, filled with the preprocessed sample\nval interpreter = Interpreter(modelFile, "
            f"Interpreter.Options().setNumThreads({man['runtime']['threads']}))\n"
            f"val inputs = arrayOfNulls<Any>({len(m['inputs'])})\n" + "\n".join(feeds) + "\n"
            + "\n".join(outs) + "\ninterpreter.runForMultipleInputsOutputs(inputs, outputs)\n```")


#: bytes per element of a tensor's dtype (4 for one not listed)
ELEMENT_BYTES = {"int8": 1, "uint8": 1, "int16": 2, "float16": 2, "int32": 4, "float32": 4, "int64": 8}


def _nbytes(t: dict) -> int:
    """Bytes of one io tensor ({shape, dtype}); a symbolic dimension counts as 1."""
    size = ELEMENT_BYTES.get(t["dtype"], 4)
    for d in t["shape"]:
        size *= int(d) if isinstance(d, int) else 1
    return size


def _kotlin(man: dict, m: dict) -> str:
    pre, inp, out = man["preprocess"], m["inputs"][0], m["outputs"][0]
    in_scale, in_zero = _q(inp)
    out_scale, out_zero = _q(out)
    n_in, n_out = _nbytes(inp), _nbytes(out)
    resize, crop = _effective_crop(pre, inp)
    return KOTLIN.format(threads=man["runtime"]["threads"], in_shape=inp["shape"], in_dtype=inp["dtype"],
                         in_layout=inp.get("layout"), resize=resize, crop=crop, scale=pre.get("scale"),
                         order=pre.get("channel_order", "RGB"), mean=list(pre.get("mean") or []),
                         std=list(pre.get("std") or []), in_scale=in_scale, in_zero=in_zero, in_bytes=n_in,
                         out_bytes=n_out, out_shape=out["shape"], out_dtype=out["dtype"], out_scale=out_scale,
                         out_zero=out_zero)


def _effective_crop(pre: dict, inp: dict) -> tuple[int | str, str]:
    """(short-side resize, "W x H" centre crop) as the runner applies them (run.py's preprocess: the crop defaults
    to the input's height, the resize to crop / 0.875), for an NHWC or NCHW image input."""
    shape = [int(d) if isinstance(d, int) else 0 for d in inp["shape"]]
    height, width = (shape[1], shape[2]) if inp.get("layout") == "NHWC" else (shape[-2], shape[-1])
    crop_h = pre.get("crop") or height
    crop_w = max(1, round(crop_h * width / height)) if height else crop_h
    return pre.get("resize") or int(round(crop_h / 0.875)), f"{crop_w} x {crop_h}"


_ENCODING = {"input_ids": "enc.ids", "attention_mask": "enc.attentionMask", "token_type_ids": "enc.typeIds"}


def _kotlin_text(man: dict, m: dict) -> str:
    """Tokenize with tokenizer.json, feed each token input by its .tflite name, read the logits."""
    pre, out = man["preprocess"], m["outputs"][0]
    feeds, kinds = [], []
    for t in m["inputs"]:
        field = next((v for k, v in _ENCODING.items() if k in t["name"]), "enc.ids")
        value = f"arrayOf({field})" if t["dtype"] == "int64" else f"arrayOf({field}.map {{ it.toInt() }}.toIntArray())"
        feeds.append(f'inputs[interpreter.getInputIndex("{t["name"]}")] = {value}  // {t["shape"]} {t["dtype"]}')
    kinds.append("// enc.ids / enc.attentionMask / enc.typeIds are LongArray of length "
                 f"{pre.get('max_length')} (padded and truncated as above)")
    shape = [int(d) if isinstance(d, int) else 1 for d in out["shape"]]
    width = shape[-1] if shape else 1
    if out["dtype"] == "float32":
        alloc, note = f"Array({shape[0] if len(shape) > 1 else 1}) {{ FloatArray({width}) }}", " (logits)"
    else:
        scale, zero = _q(out)
        alloc = f"Array({shape[0] if len(shape) > 1 else 1}) {{ ByteArray({width}) }}"
        note = f"; dequantize: score = {scale} * (q - ({zero}))"
    return KOTLIN_TEXT.format(threads=man["runtime"]["threads"], max_length=pre.get("max_length"),
                              lowercase="lower-cases" if pre.get("lowercase") else "keeps case",
                              kinds="\n".join(kinds), feeds="\n".join(feeds),
                              out_alloc=alloc, out_shape=out["shape"], out_dtype=out["dtype"], out_note=note)
