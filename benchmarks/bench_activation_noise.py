"""Where EfficientNet-Lite0's INT8 activation error comes from, and whether activation equalization moves it
(issue 14: 96 % agreement on the fresh photo set; edgepack reaches about 92 %).

Part 1 rounds only some activation tensors of the FP32 ONNX model (QuantizeLinear/DequantizeLinear pairs, uint8,
asymmetric, one scale per tensor from the min/max of the 200 calibration crops, as onnxruntime's default
calibration does; weights stay float) and scores the logits against FP32 on the fresh set (500 crops of the
OpenCV sample photos, scripts/opencv-samples.sh): by kind of tensor (ReLU6 outputs, linear feature maps =
projection outputs and residual sums, the pooled vector, the logits), then the single tensors that cost most.
The graph runs unoptimised: onnxruntime's basic fusions change hand-placed Q/DQ pairs on Clip outputs.

Part 2 is the equalization of benchmarks/equalize.py (SmoothQuant-style per-channel scales of the linear feature
maps, applied to the weights; exact in FP32) before edgepack's own `quantize_onnx` for raspberry-pi-4, scored
against the original FP32 model on the old held-out set (`val`) and the fresh set. It is not part of edgepack:
this table is why.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_activation_noise.py [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_weight_rounding import effnet_sets  # noqa: E402
from benchmarks.common import scratch_dir, update_section  # noqa: E402

READING = (
    "Reading: the row 'all of them' keeps every weight in float, so it bounds what any weight method (bias "
    "correction, learned rounding) can reach with 8-bit activations of one scale per tensor. The noise is spread "
    "over the first layer's ReLU6 output (saturated at 6 on most channels, read by a depthwise layer with large "
    "weights) and the linear feature maps; no single tensor dominates. Equalization keeps FP32 exact (parity column) "
    "but moves agreement by about one point either way on 500 crops, within sampling noise (binomial standard "
    "error about 1.1 points), and cannot reach the first layer: ReLU6 is not scale-equivariant.")
SINGLE_SAMPLES = 100    # fresh crops for the single-tensor rows (one model per tensor)
SINGLE_ROWS = 6


def _session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _run(model, x: np.ndarray, names=None) -> list[np.ndarray]:
    sess = _session(model)
    name = sess.get_inputs()[0].name
    res = [sess.run(names, {name: x[i:i + 1]}) for i in range(len(x))]
    return [np.concatenate([r[k] for r in res]) for k in range(len(res[0]))]


def kinds(model) -> dict[str, str]:
    """{tensor: kind} for the tensors onnxruntime's QDQ quantizer rounds in this network."""
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    out = {}
    for n in model.graph.node:
        t = n.output[0]
        if n.op_type == "Clip":
            out[t] = "ReLU6 outputs"
        elif (n.op_type == "Conv" and "Clip" not in readers.get(t, [])) or n.op_type == "Add":
            out[t] = "linear feature maps"
        elif n.op_type == "GlobalAveragePool":
            out[t] = "pooled vector"
        elif n.op_type == "Gemm":
            out[t] = "logits"
    return out


def ranges(model, names: list[str], x: np.ndarray) -> dict[str, tuple[float, float]]:
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in names)
    vals = _run(probe, x, names)
    return {t: (min(float(v.min()), 0.0), max(float(v.max()), 0.0)) for t, v in zip(names, vals, strict=True)}


def rounded(model, rng: dict[str, tuple[float, float]]):
    """``model`` with a uint8 Q/DQ pair after each tensor of ``rng`` (its readers read the rounded copy)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for n in g.node:
        for k, i in enumerate(n.input):
            if i in rng:
                n.input[k] = i + "_dq"
    for o in g.output:
        if o.name in rng:
            o.name += "_dq"
    nodes = list(g.node)
    del g.node[:]
    for n in nodes:
        g.node.append(n)
        for t in n.output:
            if t in rng:
                lo, hi = rng[t]
                scale = (hi - lo) / 255.0
                g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), t + "_s"),
                                      numpy_helper.from_array(np.array(round(-lo / scale), np.uint8), t + "_z")])
                g.node.extend([helper.make_node("QuantizeLinear", [t, t + "_s", t + "_z"], [t + "_q"]),
                               helper.make_node("DequantizeLinear", [t + "_q", t + "_s", t + "_z"], [t + "_dq"])])
    return m


def score(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    ref, got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    return (float(10 * np.log10((ref ** 2).sum() / max(((ref - got) ** 2).sum(), 1e-30))),
            float((ref.argmax(1) == got.argmax(1)).mean()))


def part_kinds(work: Path, e: dict) -> list[str]:
    import onnx

    model = onnx.load(str(work / "fp32.onnx"))
    kind = kinds(model)
    rng = ranges(model, list(kind), e["calib"])
    fresh = e["sets"]["fresh"]
    ref = _run(model, fresh)[0]
    lines = ["| tensors rounded (activations only) | tensors | fresh set: logits SQNR dB / agreement |",
             "|---|---|---|"]
    for name in [*sorted(set(kind.values())), "all of them"]:
        sel = {t: rng[t] for t in kind if name in ("all of them", kind[t])}
        s, a = score(ref, _run(rounded(model, sel), fresh)[0])
        lines.append(f"| {name} | {len(sel)} | {s:.1f} / {a:.3f} |")
        print(lines[-1], flush=True)
    few = fresh[:SINGLE_SAMPLES]
    ref_few = ref[:SINGLE_SAMPLES]
    single = []
    for t in kind:
        s, a = score(ref_few, _run(rounded(model, {t: rng[t]}), few)[0])
        single.append((s, a, t))
    lines += ["", f"The {SINGLE_ROWS} single tensors that cost most, each rounded alone ({SINGLE_SAMPLES} fresh "
              "crops):", "", "| tensor | kind | range | logits SQNR dB / agreement |", "|---|---|---|---|"]
    for s, a, t in sorted(single)[:SINGLE_ROWS]:
        lines.append(f"| `{t}` | {kind[t]} | {rng[t][0]:.2f} .. {rng[t][1]:.2f} | {s:.1f} / {a:.3f} |")
    return lines


def part_equalize(work: Path, e: dict) -> list[str]:
    import onnx

    from benchmarks import equalize
    from edgepack.backends import onnx as onnx_backend
    from edgepack.backends.onnx_quantize import quantize_onnx

    model = onnx.load(str(work / "fp32.onnx"))
    refs = {k: onnx_backend.Runner(work / "fp32.onnx", threads=2, arithmetic="reference").run_samples(x)
            for k, x in e["sets"].items()}
    lines = ["| source of quantize_onnx | old held-out set: SQNR dB / agreement | fresh set | quantize time |",
             "|---|---|---|---|"]
    for label, alpha in (("the FP32 model (edgepack's default)", None), ("equalized, alpha 0.5", 0.5),
                         ("equalized, alpha 1.0", 1.0)):
        src = work / "fp32.onnx"
        note = ""
        if alpha is not None:
            eq, rec = equalize.equalize(model, e["calib"], alpha=alpha, samples=200)
            src = work / f"eq_{alpha}.onnx"
            onnx.save(eq, str(src))
            note = f" ({rec['linear_maps']} maps, FP32 parity {rec.get('parity_error')})"
        t0 = time.perf_counter()
        quantize_onnx(src, work / "int8.onnx", e["calib"], target_arch="aarch64")
        secs = time.perf_counter() - t0
        cells = []
        for k, x in e["sets"].items():
            got = onnx_backend.Runner(work / "int8.onnx", threads=2, arithmetic="reference").run_samples(x)
            s, a = score(refs[k], got)
            cells.append(f"{s:.1f} / {a:.3f}")
        lines.append(f"| {label}{note} | {cells[0]} | {cells[1]} | {secs:.0f} s |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    with scratch_dir("ep-actnoise-") as work:
        e = effnet_sets(work)
        lines = part_kinds(work, e) + ["", "Activation equalization of the linear feature maps, then edgepack's "
                                       "quantize_onnx (raspberry-pi-4, round-to-nearest weights):", ""]
        lines += part_equalize(work, e)
    body = ("\n".join(lines) + "\n\n" + READING + "\n\nReproduce: `PYTHONPATH=. nice -n 10 .venv/bin/python "
            "benchmarks/bench_activation_noise.py`.")
    print(body)
    if not args.no_write:
        update_section("activation-noise", "EfficientNet-Lite0: where the INT8 activation error is", body)


if __name__ == "__main__":
    main()
