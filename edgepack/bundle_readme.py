"""README.md for a bundle: how to run it on the device, with the input layout and quantization
written out, and for TFLite a Kotlin snippet for Android's Interpreter."""

from __future__ import annotations

KOTLIN = """\
```kotlin
// build.gradle: implementation("com.google.ai.edge.litert:litert:1.0.1")
val options = Interpreter.Options().apply {{ setNumThreads({threads}) }}   // XNNPACK is on by default
val interpreter = Interpreter(FileUtil.loadMappedFile(context, "model.tflite"), options)

// Input: {in_shape} {in_dtype}, layout {in_layout}. Preprocess each pixel as the manifest says
// (resize {resize}, centre crop {crop}, x = (pixel * {scale} - mean) / std), then quantize:
//   q = round(x / {in_scale}) + {in_zero}, clamped to the {in_dtype} range.
val input = ByteBuffer.allocateDirect({in_bytes}).order(ByteOrder.nativeOrder())
// ... input.put(q.toByte()) for every value, H x W x C order ...
val output = ByteBuffer.allocateDirect({out_bytes}).order(ByteOrder.nativeOrder())
interpreter.run(input, output)
// Output: {out_shape} {out_dtype}; dequantize: score = {out_scale} * (q - ({out_zero}))
```"""


def _q(t: dict) -> tuple[str, str]:
    q = t.get("quantization")
    return (f"{q['scale']:.8g}", str(q["zero_point"])) if q else ("1 (float)", "0")


def render(man: dict) -> str:
    """The bundle README text."""
    pre = man["preprocess"]
    lines = [f"# {man['name']} for {man['target']['name']}", "",
             "Built by edgepack. The verdict, budgets and measurements are in report.md / report.html and "
             "manifest.json; check every file with `edgepack verify .`.", "",
             "## Run on the device", "",
             "```", "python3 run.py photo.jpg --time 100     # top-5 and p50/p90 latency",
             "python3 run.py --golden                  # stored input -> stored output", "```", ""]
    for m in man["models"]:
        lines += [f"## {m['file']} ({m['format']}, {m['precision']})", ""]
        for kind in ("inputs", "outputs"):
            for t in m[kind]:
                scale, zero = _q(t)
                lines.append(f"- {kind[:-1]} `{t['name']}`: shape {t['shape']}, {t['dtype']}, layout "
                             f"{t.get('layout') or '-'}, scale {scale}, zero point {zero}")
        if m["format"] == "tflite" and pre.get("kind") != "text":
            lines += ["", _kotlin(man, m), ""]
        lines.append("")
    return "\n".join(lines)


def _kotlin(man: dict, m: dict) -> str:
    pre, inp, out = man["preprocess"], m["inputs"][0], m["outputs"][0]
    in_scale, in_zero = _q(inp)
    out_scale, out_zero = _q(out)
    width = {"int8": 1, "uint8": 1, "float32": 4}
    n_in = width.get(inp["dtype"], 4)
    n_out = width.get(out["dtype"], 4)
    for d in inp["shape"]:
        n_in *= int(d) if isinstance(d, int) else 1
    for d in out["shape"]:
        n_out *= int(d) if isinstance(d, int) else 1
    return KOTLIN.format(threads=man["runtime"]["threads"], in_shape=inp["shape"], in_dtype=inp["dtype"],
                         in_layout=inp.get("layout"), resize=pre.get("resize"), crop=pre.get("crop"),
                         scale=pre.get("scale"), in_scale=in_scale, in_zero=in_zero, in_bytes=n_in,
                         out_bytes=n_out, out_shape=out["shape"], out_dtype=out["dtype"], out_scale=out_scale,
                         out_zero=out_zero)
