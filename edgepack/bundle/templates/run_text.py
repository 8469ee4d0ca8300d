#!/usr/bin/env python3
"""Run this edgepack text bundle on the device: classify sentences, optionally time N runs.

Needs only numpy and tokenizers plus the model's runtime: onnxruntime for .onnx models, and ai_edge_litert
or tflite_runtime for .tflite models. No transformers, no torch. Tokenization follows manifest.json
("preprocess": tokenizer file, max_length, model_input_names, pad_id) with the bundle's tokenizer.json.

    python3 run_text.py "WINNER! Claim your prize now"       # label scores for one sentence
    python3 run_text.py --file texts.txt                      # one sentence per line; one JSON line each
    python3 run_text.py "hello" --time 100                    # also p50/p90 latency over 100 runs, ms
    python3 run_text.py --golden                              # stored golden input vs stored output
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class TextTokenizer:
    """tokenizer.json with truncation and right padding to a fixed length; returns {name: (1, L) int64}."""

    def __init__(self, pre):
        from tokenizers import Tokenizer

        self.names = list(pre["model_input_names"])
        self.length = int(pre["max_length"])
        self.tok = Tokenizer.from_file(str(HERE / pre["tokenizer"]))
        self.tok.enable_truncation(self.length)
        self.tok.enable_padding(
            length=self.length, pad_id=int(pre.get("pad_id", 0)), pad_token=pre.get("pad_token", "[PAD]")
        )

    def __call__(self, text):
        enc = self.tok.encode(text)
        arrays = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        return {n: np.asarray([arrays[n]], dtype=np.int64) for n in self.names}


class OnnxModel:
    def __init__(self, path, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = {
            i.name: (np.int32 if i.type == "tensor(int32)" else np.int64) for i in self.sess.get_inputs()
        }

    def __call__(self, feed):
        return self.sess.run(None, {n: feed[n].astype(t) for n, t in self.inputs.items()})[0].astype(
            np.float32
        )


class TFLiteModel:
    """Feeds token arrays by input name (int32 or int64 as the model declares); dequantizes the output."""

    def __init__(self, path, threads):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            from tflite_runtime.interpreter import Interpreter
        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        self.inputs, self.out = self.it.get_input_details(), self.it.get_output_details()[0]

    def __call__(self, feed):
        for d in self.inputs:
            self.it.set_tensor(d["index"], feed[_match(d["name"], feed)].astype(d["dtype"]))
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])
        scale, zero = self.out["quantization"]
        return ((y.astype(np.float32) - zero) * scale) if self.out["dtype"] != np.float32 and scale else y


def _match(tensor_name, feed):
    """TFLite names inputs like 'serving_default_input_ids:0': find the token array it means."""
    for name in sorted(feed, key=len, reverse=True):
        if name in tensor_name:
            return name
    sys.exit(f"model input {tensor_name!r} matches none of {sorted(feed)}")


def load_model(manifest, threads, fmt=None):
    for entry in manifest["models"]:
        if fmt and entry["format"] != fmt:
            continue
        cls = OnnxModel if entry["format"] == "onnx" else TFLiteModel
        try:
            return entry, cls(HERE / entry["file"], threads)
        except ImportError:
            continue
    sys.exit(
        "no runtime for this bundle: pip install onnxruntime (for .onnx) or ai-edge-litert (for .tflite)"
    )


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def classify(model, tokenizer, text, labels):
    """{"text", "label", "scores": {label: probability}} for one sentence."""
    probs = softmax(model(tokenizer(text))[0].reshape(-1))
    names = labels or [str(i) for i in range(len(probs))]
    return {
        "text": text,
        "label": names[int(np.argmax(probs))],
        "scores": {n: round(float(p), 6) for n, p in zip(names, probs, strict=False)},
    }


def time_runs(model, feed, runs):
    """Latencies (ms) of `runs` calls after 5 warm-up calls."""
    for _ in range(5):
        model(feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(feed)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def check_golden(manifest, model, entry):
    """Run the stored golden token arrays; exit 1 when the output differs by more than the tolerance."""
    golden = np.load(HERE / manifest["golden"]["file"])
    feed = {n: golden[n] for n in manifest["preprocess"]["model_input_names"]}
    diff = float(np.max(np.abs(model(feed) - golden[entry["format"]])))
    print(f"golden max abs diff {diff:.6g} (tolerance {manifest['golden']['tolerance']})")
    sys.exit(0 if diff <= manifest["golden"]["tolerance"] else 1)


def main():
    manifest = json.loads((HERE / "manifest.json").read_text())
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("text", nargs="?", help="sentence to classify")
    parser.add_argument("--file", help="classify every line of this UTF-8 file")
    parser.add_argument("--time", type=int, default=0, metavar="N", help="time N runs after 5 warm-up runs")
    parser.add_argument("--threads", type=int, default=manifest.get("runtime", {}).get("threads", 1))
    parser.add_argument("--format", choices=sorted({m["format"] for m in manifest["models"]}))
    parser.add_argument("--golden", action="store_true", help="check the stored golden input/output")
    parser.add_argument("--time-golden", type=int, default=0, metavar="N",
                        help="time N runs on the golden input; print one JSON line (used by edgepack bench)")
    args = parser.parse_args()
    entry, model = load_model(manifest, args.threads, args.format)
    if args.golden:
        check_golden(manifest, model, entry)
    if args.time_golden:
        golden = np.load(HERE / manifest["golden"]["file"])
        times = time_runs(model, {n: golden[n] for n in manifest["preprocess"]["model_input_names"]},
                          args.time_golden)
        print(json.dumps({"p50_ms": round(float(np.percentile(times, 50)), 4),
                          "p90_ms": round(float(np.percentile(times, 90)), 4),
                          "mean_ms": round(float(np.mean(times)), 4), "runs": len(times),
                          "threads": args.threads, "format": entry["format"], "file": entry["file"],
                          "runtime": "onnxruntime" if entry["format"] == "onnx" else "litert",
                          "machine": __import__("platform").machine(),
                          "python": __import__("platform").python_version()}))
        return
    tokenizer = TextTokenizer(manifest["preprocess"])
    if args.file:
        lines = [t.strip() for t in Path(args.file).read_text(encoding="utf-8").splitlines() if t.strip()]
        for line in lines:
            print(json.dumps(classify(model, tokenizer, line, manifest.get("labels"))))
        return
    if not args.text:
        parser.error("give a sentence, --file or --golden")
    print(json.dumps(classify(model, tokenizer, args.text, manifest.get("labels"))))
    if args.time:
        times = time_runs(model, tokenizer(args.text), args.time)
        print(
            f"latency over {args.time} runs: p50 {np.percentile(times, 50):.2f} ms, "
            f"p90 {np.percentile(times, 90):.2f} ms ({args.threads} threads, {entry['format']})"
        )


if __name__ == "__main__":
    main()
