"""Where the INT8 files' bytes and time go: the figures behind the README's "Goals: met and missed".

Reads the bundles evaluate.py built in ``--work`` and prints:

1. the INT8 ONNX file's bytes by part (initializers by dtype, node protos, value_info) and its Q/DQ node count;
2. an ONNX Runtime per-operator profile at 1 thread, FP32 (the PyTorch model exported with edgepack's own
   ``backends.onnx.export``, opset 17) against the shipped INT8 file, ms per run by operator type;
3. the INT8 TFLite file's operators, and the XNNPACK delegate partitions LiteRT makes of it.

    python -m examples.lraspp_shapes.inspect_int8 --work /work/tmp/lraspp/eval
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from pathlib import Path

import numpy as np


def onnx_bytes(path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    by_dtype = collections.Counter()
    for t in g.initializer:
        by_dtype[str(numpy_helper.to_array(t).dtype)] += numpy_helper.to_array(t).nbytes
    ops = collections.Counter(n.op_type for n in g.node)
    names = [len(n.name) for n in g.node]
    print(f"{path}: {path.stat().st_size:,} bytes")
    print(f"  initializer data by dtype: {dict(by_dtype)}")
    print(f"  node protos {sum(n.ByteSize() for n in g.node):,} bytes ({len(g.node)} nodes, names "
          f"{np.mean(names):.0f} characters on average); value_info {sum(v.ByteSize() for v in g.value_info):,}")
    print(f"  QuantizeLinear {ops['QuantizeLinear']}, DequantizeLinear {ops['DequantizeLinear']}")


def ort_profile(models: dict[str, Path], x: np.ndarray, runs: int = 30) -> None:
    import onnxruntime as ort

    for name, path in models.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = str(path.with_suffix("")) + "_profile"
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(runs + 5):
            sess.run(None, feed)
        trace = sess.end_profiling()
        total, count = collections.Counter(), collections.Counter()
        for e in json.loads(Path(trace).read_text()):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                total[e["args"]["op_name"]] += e["dur"]
                count[e["args"]["op_name"]] += 1
        os.remove(trace)
        n = runs + 5
        per_op = ", ".join(f"{op} {us / n / 1000:.3f} ms (x{count[op] // n})" for op, us in total.most_common())
        print(f"ORT 1 thread, {name}: {sum(total.values()) / n / 1000:.2f} ms per run: {per_op}")


def tflite_ops(path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    plain = Interpreter(model_path=str(path), num_threads=1)
    ops = collections.Counter(o["op_name"] for o in plain._get_ops_details())
    print(f"{path}: operators {dict(ops.most_common())}")
    delegated = Interpreter(model_path=str(path), num_threads=1)
    delegated.allocate_tensors()   # applies LiteRT's default XNNPACK delegate
    parts = sum(o["op_name"] == "DELEGATE" for o in delegated._get_ops_details())
    print(f"  XNNPACK delegate partitions: {parts}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/work/tmp/lraspp/eval"))
    args = ap.parse_args(argv)
    import torch

    from edgepack.backends import onnx as onnx_backend
    from examples.lraspp_shapes.model import IMAGE_SIZE, create_model

    int8 = args.work / "raspberry-pi-4" / "model.onnx"
    onnx_bytes(int8)
    fp32 = args.work / "fp32_export.onnx"
    torch.set_num_threads(1)
    onnx_backend.export(create_model(), (1, 3, IMAGE_SIZE, IMAGE_SIZE), fp32, opset=17)
    x = np.random.default_rng(0).normal(0, 1, (1, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    ort_profile({"fp32": fp32, "int8": int8}, x)
    tflite_ops(args.work / "android-arm64" / "model.tflite")


if __name__ == "__main__":
    main()
