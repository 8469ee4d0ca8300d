"""One INT8 EfficientNet-Lite0 file, two arithmetics: this host's fused ONNX Runtime kernels against exact integer
arithmetic (QDQ pairs unfused, ORT's session.disable_quant_qdq), with 8-bit and 7-bit (reduce_range) weights.

On x86 hosts without VNNI the fused u8 x s8 kernels saturate (vpmaddubsw's int16 pair sums); an ARM device's
kernels do not. Quantized with edgepack's own recipe (edgepack.backends.onnx_quantize.quantize_onnx: QDQ, per-channel
minmax on the 200 shipped calibration crops, bias correction), scored against FP32 on held-out natural crops
(calibration_data/make_calibration.py --split val, photos not used in calibration).

    .venv/bin/python benchmarks/bench_int8_arithmetic.py [--count 300] [--work /tmp/int8_arith]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--work", default="/tmp/edgepack-int8-arithmetic")
    args = ap.parse_args()
    import onnxruntime as ort
    import torch

    from edgepack.backends import onnx as ob
    from edgepack.backends import onnx_quantize as oq
    from edgepack.config import Preprocess
    from edgepack.inputs import data

    torch.set_num_threads(2)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, str(ROOT / "calibration_data/make_calibration.py"), "--split", "val",
                        "--count", str(args.count), "--out", str(work / "val")], check=True, capture_output=True)
        pre = Preprocess(resize=256, crop=224, mean=(127.0,) * 3, std=(128.0,) * 3, scale=1.0)
        shape = (1, 3, 224, 224)
        cal = data.load(str(ROOT / "calibration_data/images"), input_shape=shape, preprocess=pre, count=200, seed=0,
                        role="calibration").x
        val = data.load(str(work / "val"), input_shape=shape, preprocess=pre, count=None, seed=0,
                        role="validation").x
        from examples.efficientnet_lite0.model import create_model

        ob.export_args(create_model().eval(), (torch.zeros(shape),), work / "raw.onnx", input_names=["input"],
                       opset=17)
        ob.simplify(work / "raw.onnx", work / "fp32.onnx")

        def run(path, arithmetic):
            sess = ob.session(path, 2, arithmetic)
            name = sess.get_inputs()[0].name
            return np.concatenate([sess.run(None, {name: val[i:i + 1]})[0] for i in range(len(val))])

        ref = run(work / "fp32.onnx", "native")
        print(f"host saturates (x86 without VNNI): {oq.host_saturates()}; onnxruntime {ort.__version__}; "
              f"{len(val)} held-out crops")
        print(f"{'weights':<8} {'arithmetic':<10} {'agreement':>9} {'SQNR dB':>8} {'seconds':>8}")
        for reduce_range in (False, True):
            out = work / f"int8_rr{int(reduce_range)}.onnx"
            real = oq.host_saturates
            oq.host_saturates = lambda r=reduce_range: r  # int8_plan's x86 path: 7-bit weights when it saturates
            try:
                oq.quantize_onnx(work / "fp32.onnx", out, cal, target_arch=oq.host_arch())
            finally:
                oq.host_saturates = real
            for arithmetic in ("native", "reference"):
                t0 = time.perf_counter()
                y = run(out, arithmetic)
                agree = float(np.mean(y.argmax(1) == ref.argmax(1)))
                sqnr = 10 * np.log10((ref ** 2).sum() / ((y - ref) ** 2).sum())
                print(f"{'7-bit' if reduce_range else '8-bit':<8} {arithmetic:<10} {agree:>9.3f} {sqnr:>8.1f} "
                      f"{time.perf_counter() - t0:>8.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
