"""edgepack's static INT8 (QDQ) vs onnxruntime's dynamic INT8 on the SMS spam MiniLM classifier, in one run.

Same model (all-MiniLM-L6-v2 + mean pooling + the committed linear head, examples/sms_spam), same FP32 ONNX
export (fixed 1x128 int64 inputs), calibration on TRAIN texts, accuracy on the held-out TEST split (1,116 texts,
batch 1 as on the device). Latency: p50 at 1 thread, the three models loaded in one process, warmed up and
timed interleaved (A, B, C, A, ...) so that noise on a shared machine hits them alike; compare the ratios.
Prints a Markdown table on stdout (``benchmarks.common.update_section`` can put it in BENCHMARKS.md).

    .venv/bin/python benchmarks/bench_text_int8.py                 # about 5 min on 2 busy cores
    .venv/bin/python benchmarks/bench_text_int8.py --limit 300     # fewer test texts, faster
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgepack.backends import onnx_text_quantize  # noqa: E402
from edgepack.inputs import text  # noqa: E402


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def predictions(path: Path, x: dict[str, np.ndarray], threads: int = 2) -> np.ndarray:
    """Argmax class of every row of x, run one row at a time."""
    sess = session(path, threads)
    names = [i.name for i in sess.get_inputs()]
    return np.array(
        [
            int(np.argmax(sess.run(None, {n: x[n][i : i + 1] for n in names})[0]))
            for i in range(len(x["input_ids"]))
        ]
    )


def latency_p50(paths: dict[str, Path], feed: dict[str, np.ndarray], runs: int, warmup: int = 10) -> dict:
    """{name: p50 ms} at 1 thread, every model warmed up, then timed interleaved."""
    sessions = {k: session(p, 1) for k, p in paths.items()}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[k].append((time.perf_counter() - t0) * 1000.0)
    return {k: float(np.median(v)) for k, v in times.items()}


def build(work: Path, max_length: int, calib_count: int) -> tuple[dict[str, Path], dict[str, float]]:
    """FP32 export, edgepack static INT8 and ORT dynamic INT8 of the example; (paths, quantize s)."""
    import torch

    from examples.sms_spam import data
    from examples.sms_spam.model import create_model, tokenizer_json

    torch.set_num_threads(2)
    paths = {
        "FP32": work / "fp32.onnx",
        "edgepack static INT8": work / "static.onnx",
        "ORT dynamic INT8": work / "dynamic.onnx",
    }
    from edgepack.backends import onnx as onnx_backend

    model = create_model()
    names = text.forward_input_names(model, text.tokenizer_settings(tokenizer_json(), max_length)["model_input_names"])
    onnx_backend.export_args(model, text.example_inputs(names, max_length), work / "raw.onnx", input_names=names,
                             opset=17)
    onnx_backend.simplify(work / "raw.onnx", paths["FP32"])
    train, _ = data.load_split("train")
    pick = np.random.default_rng(0).choice(len(train), calib_count, replace=False)
    calib = text.tokenize([train[i] for i in sorted(pick)], tokenizer_json(), max_length, names)
    seconds = {"FP32": 0.0}
    t0 = time.perf_counter()
    onnx_text_quantize.quantize_text_onnx(paths["FP32"], paths["edgepack static INT8"], calib)
    seconds["edgepack static INT8"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    onnx_text_quantize.quantize_text_dynamic(paths["FP32"], paths["ORT dynamic INT8"])
    seconds["ORT dynamic INT8"] = time.perf_counter() - t0
    return paths, seconds


def table(paths, seconds, acc, lat) -> str:
    fp_size, fp_acc, fp_lat = paths["FP32"].stat().st_size, acc["FP32"], lat["FP32"]
    rows = [
        "| model | accuracy % | drop (points) | size MB | size vs FP32 | p50 ms (1 thread) | latency vs FP32 "
        "| quantize s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, p in paths.items():
        size = p.stat().st_size
        rows.append(
            f"| {k} | {acc[k]:.2f} | {fp_acc - acc[k]:.2f} | {size / 1e6:.1f} | {size / fp_size:.2f}x | "
            f"{lat[k]:.1f} | {lat[k] / fp_lat:.2f}x | {seconds[k]:.0f} |"
        )
    return "\n".join(rows)


def _update(*a):
    from benchmarks.common import update_section as _u

    _u(*a)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--calib-count", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None, help="use the first N test texts only")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    text.offline_env()
    from examples.sms_spam import data
    from examples.sms_spam.model import tokenizer_json

    with tempfile.TemporaryDirectory() as tmp:
        paths, seconds = build(Path(tmp), args.max_length, args.calib_count)
        texts, labels = data.load_split("test")
        texts, labels = texts[: args.limit], labels[: args.limit]
        x = text.tokenize(texts, tokenizer_json(), args.max_length, list(
            text.tokenizer_settings(tokenizer_json(), args.max_length)["model_input_names"]))
        preds = {k: predictions(p, x) for k, p in paths.items()}
        acc = {k: 100.0 * float((v == labels).mean()) for k, v in preds.items()}
        agree = {k: 100.0 * float((v == preds["FP32"]).mean()) for k, v in preds.items()}
        lat = latency_p50(paths, {k: v[:1] for k, v in x.items()}, args.runs)
        body = "\n".join([
            f"MiniLM-L6 + linear head on the SMS Spam Collection TEST split, {len(labels)} texts, max length "
            f"{args.max_length}; calibration: {args.calib_count} TRAIN texts; latency: 1 thread, p50 of "
            f"{args.runs} interleaved runs. Top-1 agreement with FP32: "
            + ", ".join(f"{k} {v:.2f} %" for k, v in agree.items() if k != "FP32") + ".", "",
            table(paths, seconds, acc, lat), "",
            "Reproduce: `.venv/bin/python benchmarks/bench_text_int8.py`."])
        print(body)
        if args.limit is None:
            _update("text-int8", "Text: edgepack static INT8 vs onnxruntime dynamic INT8 (MiniLM)", body)


if __name__ == "__main__":
    main()
