"""edgepack's full-integer INT8 .tflite vs the onnx2tf command line's own full-integer quantization.

Measured in one run. Same model (pretrained EfficientNet-Lite0), same FP32 export (edgepack's,
onnxslim-simplified: onnx2tf fails on the plain export), same 200 calibration crops, same 500 held-out
natural photos. Reference for agreement: the FP32 .tflite (edgepack's; it reproduces the ONNX model to
~3e-5). Measures top-1 agreement with it, SQNR, file size, LiteRT p50 latency at 1 thread and at
min(4, host cores) threads (all models interleaved in one child process after warm-up), and conversion
wall/CPU time, each conversion in a fresh process run under `unshare -n` (no network) when available.
Writes the table into benchmarks/BENCHMARKS.md (key "tflite-int8").

onnx2tf is run as a user would: `onnx2tf -i fp32.onnx -o out -oiqt -cind input calib.npy MEAN STD`, but via a
four-line wrapper that replaces `onnx2tf.onnx2tf.download_test_image_data` (an internet fetch onnx2tf does for
every all-4-D-RGB-input model, even with -cind) with the first 20 calibration images, then calls
`onnx2tf.main()` with the same arguments. Its `*_full_integer_quant.tflite` is compared (int8 in/out, like
edgepack's); the command also writes the float32, float16, dynamic-range, integer and int16-activation
variants, and its wall time includes them.

    .venv/bin/python benchmarks/bench_tflite.py
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import efficientnet_lite0, scratch_dir, update_section  # noqa: E402
from edgepack.device import measure  # noqa: E402
from edgepack.util import host_cores  # noqa: E402

WRAPPER = '''import sys, numpy as np
import onnx2tf.onnx2tf as o2t, onnx2tf.utils.common_functions as cf
samples = np.load(sys.argv[1])[:20]  # NHWC float32 0..1, what onnx2tf would have downloaded
o2t.download_test_image_data = cf.download_test_image_data = lambda: samples
sys.argv = ["onnx2tf", *sys.argv[2:]]
o2t.main()
'''


def _offline(cmd: list[str]) -> tuple[list[str], bool]:
    """Prefix `unshare -n` (no network namespace) if this user may use it."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"],
                                                  capture_output=True).returncode == 0:
        return ["unshare", "-n", *cmd], True
    return cmd, False


def _timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd` (offline if possible); wall seconds and the child's CPU seconds (user + sys)."""
    cmd, offline = _offline(cmd)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=log.parent, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "offline": offline}


def edgepack_convert(onnx_path: str, calib_path: str, out: str, bias_correction: str) -> None:
    """Child mode: FP32 + INT8 .tflite as an edgepack build makes them; prints per-step seconds as JSON."""
    from edgepack.backends import tflite

    calib = np.load(calib_path)
    t0 = time.perf_counter()
    fp32 = tflite.convert(Path(onnx_path), Path(out), None)
    t1 = time.perf_counter()
    int8 = tflite.convert(Path(onnx_path), Path(out), calib, io_dtype="int8",
                          bias_correction=bias_correction == "1")
    t2 = time.perf_counter()
    print(json.dumps({"fp32": str(fp32), "int8": str(int8), "fp32_s": t1 - t0, "int8_s": t2 - t1}))


def _run(work: Path) -> None:
    from edgepack.backends import tflite
    from edgepack.tasks.classify import Classify

    quality = Classify().quality

    calib, val, ood = efficientnet_lite0(work)  # and work/fp32.onnx
    np.save(work / "calib_nchw.npy", calib)
    # onnx2tf wants NHWC 0..1 and applies (x - mean) / std: 127/255 and 128/255 give back (pixel - 127) / 128
    nhwc01 = ((calib.transpose(0, 2, 3, 1) * 128.0 + 127.0) / 255.0).astype(np.float32)
    np.save(work / "calib_nhwc01.npy", nhwc01)
    (work / "onnx2tf_offline.py").write_text(WRAPPER)

    runs = {}
    mean, std = (f"[[[[{v / 255:.8f},{v / 255:.8f},{v / 255:.8f}]]]]" for v in (127, 128))
    runs["onnx2tf"] = _timed([sys.executable, str(work / "onnx2tf_offline.py"),
                              str(work / "calib_nhwc01.npy"), "-i", str(work / "fp32.onnx"),
                              "-o", str(work / "onnx2tf_out"), "-oiqt",
                              "-cind", "input", str(work / "calib_nhwc01.npy"), mean, std, "-n"],
                             work / "onnx2tf.log")
    for key, bc in (("edgepack_nobc", "0"), ("edgepack", "1")):
        out = work / key
        runs[key] = _timed([sys.executable, str(Path(__file__).resolve()), "--edgepack-convert",
                            str(work / "fp32.onnx"), str(work / "calib_nchw.npy"), str(out), bc],
                           work / f"{key}.log")
        runs[key].update(json.loads((work / f"{key}.log").read_text().strip().splitlines()[-1]))
    o2t_int8 = work / "onnx2tf_out" / "fp32_full_integer_quant.tflite"
    paths = {"FP32 .tflite (edgepack)": Path(runs["edgepack"]["fp32"]),
             "onnx2tf CLI -oiqt, full_integer_quant": o2t_int8,
             "edgepack INT8, no bias correction": Path(runs["edgepack_nobc"]["int8"]),
             "edgepack INT8 (default: bias correction)": Path(runs["edgepack"]["int8"])}
    run_of = dict(zip(paths, [None, "onnx2tf", "edgepack_nobc", "edgepack"], strict=True))
    outs = {n: tflite.TFLiteRunner(p, threads=host_cores()).run_samples(val) for n, p in paths.items()}
    outs_ood = {n: tflite.TFLiteRunner(p, threads=host_cores()).run_samples(ood) for n, p in paths.items()}
    threads = min(4, host_cores())
    specs = {n: ("tflite", p) for n, p in paths.items()}
    lat1 = measure.latency(specs, val[:1], threads=1, runs=100, workdir=work)
    latn = measure.latency(specs, val[:1], threads=threads, runs=100, workdir=work)
    ref = "FP32 .tflite (edgepack)"
    table = ["| model | top-1 agreement, natural photos | SQNR dB | agreement, out-of-domain images | "
             f"size MB (x FP32) | p50 ms 1 thr (x FP32) | p50 ms {threads} thr (x FP32) | "
             "conversion wall s (CPU s) | io |", "|---|---|---|---|---|---|---|---|---|"]
    for name, path in paths.items():
        q = quality(outs[ref], outs[name], None)
        q_ood = quality(outs_ood[ref], outs_ood[name], None)
        size, fsize = path.stat().st_size, paths[ref].stat().st_size
        r = runs.get(run_of[name])
        if r is None:
            conv = "in the edgepack rows"
        elif run_of[name] == "onnx2tf":
            conv = f"{r['wall_s']:.1f} ({r['cpu_s']:.0f}), all variants"
        else:
            conv = f"{r['wall_s']:.1f} ({r['cpu_s']:.0f}), FP32 {r['fp32_s']:.1f} + INT8 {r['int8_s']:.1f}"
        io = tflite.io_details(path)["inputs"][0]["dtype"]
        l1, ln = lat1[name]["p50"], latn[name]["p50"]
        table.append(f"| {name} | {q['agreement']:.3f} | {q['sqnr_db']:.1f} | {q_ood['agreement']:.3f} | "
                     f"{size / 1e6:.2f} "
                     f"({size / fsize:.3f}x) | {l1:.2f} ({l1 / lat1[ref]['p50']:.2f}x) "
                     f"| {ln:.2f} ({ln / latn[ref]['p50']:.2f}x) | {conv} | {io} |")
    offline = all(r["offline"] for r in runs.values())
    text = "\n".join([
        "EfficientNet-Lite0 (pretrained, ImageNet), onnxslim-simplified FP32 export, 200 calibration "
        "crops (calibration_data/images), 500 held-out crops of 14 other natural photos and 500 crops of 5 "
        "out-of-domain images (retina scan, moon, blurred clock, gravel, scanned page; `make_calibration.py "
        "--split val` / `--split ood`). "
        "Agreement = top-1 of the INT8 .tflite equals top-1 of the FP32 .tflite. Latency: LiteRT (XNNPACK), "
        "batch 1, p50 of 100 runs after warm-up, all models interleaved in one child process. Conversion: "
        "wall and CPU seconds of a fresh process (imports included)"
        + (", run under `unshare -n` (no network)." if offline else "."), "",
        "onnx2tf row: `onnx2tf -i fp32.onnx -o out -oiqt -cind input calib.npy [[[[127/255]*3]]] "
        "[[[[128/255]*3]]] -n` (calib.npy = the same 200 crops, NHWC float32 0..1), through a wrapper that "
        "replaces `onnx2tf.onnx2tf.download_test_image_data` with the first 20 calibration crops (onnx2tf "
        "downloads sample images for every 4-D RGB model even with -cind) and calls `onnx2tf.main()`. "
        "Its wall time covers everything that command writes (float32, float16, dynamic-range, integer, "
        "full-integer, int16-activation .tflite files and a SavedModel). edgepack rows: "
        "`edgepack.backends.tflite.convert` for the FP32 and the INT8 model, as a build makes them.", "",
        *table, "",
        f"Host: {host_cores()} cores, shared with other work (absolute ms and s vary between runs; compare "
        "ratios within the table). Reproduce: `.venv/bin/python benchmarks/bench_tflite.py`."])
    update_section("tflite-int8", "edgepack INT8 .tflite vs the onnx2tf command line (-oiqt)", text)
    print(text)


def main() -> None:
    with scratch_dir("bench-tflite-") as work:
        _run(work)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--edgepack-convert":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        edgepack_convert(*sys.argv[2:6])
    else:
        main()
