"""edgepack's INT8 ONNX against its peers, one run per model: onnxruntime `quantize_static` with its defaults,
NNCF `nncf.quantize` (defaults, ONNX backend) and NNCF `nncf.quantize_with_accuracy_control` (ONNX backend).

Models (the same FP32 ONNX export, opset 17, legacy exporter, onnxslim-simplified, for every tool):
  effnet   pretrained EfficientNet-Lite0, 200 calibration crops, 500 held-out natural crops (benchmarks/common.py);
           quality = top-1 agreement with FP32 and logits SQNR (no labels).
  fashion  the Fashion-MNIST example (96 px), 200 TRAIN images for calibration, 2,000 labelled TEST images;
           quality = accuracy drop FP32 -> INT8 in points.
  minilm   the SMS spam MiniLM-L6 classifier (1x128 tokens), 100 TRAIN texts for calibration, the labelled
           TEST texts; quality = accuracy drop in points.

edgepack row: what `edgepack build --target raspberry-pi-4` ships when its default recipe meets the profile's budget
(images: edgepack.backends.onnx_quantize.quantize_onnx, minmax, per-channel, target_arch aarch64, i.e. 8-bit
weights validated with reference arithmetic; text: onnx_text_quantize.quantize_text_onnx, the calibrated static
candidate). Every INT8 model is scored under both arithmetics: "native" (this host's fused ORT kernels; on x86
without VNNI the u8 x s8 products saturate) and "reference" (ORT's session.disable_quant_qdq: exact integer
products, what the ARM device computes). NNCF's accuracy control gets the first 200 samples of the scored set as
its validation set (FP32 top-1 as targets for effnet), max_drop 0.01 (1 point), and its validation_fn runs the
reference arithmetic, as edgepack validates for this target.

Each tool quantizes in its own child process under /usr/bin/time -v (peak RSS of that process; ru_maxrss read in
the child itself would carry this parent's peak across exec), every ONNX Runtime session in it pinned to 1
thread, BLAS to 1 thread. Latency: 1-thread p50 of every model interleaved in one child (edgepack.device.measure,
native kernels). The machine is shared: timings are noisy, compare ratios within one table.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_int8_peers.py --model fashion
    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_int8_peers.py --model effnet --ac-max-iterations 10
    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_int8_peers.py --model minilm \
        --ac-max-iterations 5 --ac-ranking-subset 50

Needs `pip install nncf==3.4.0 "scikit-learn<1.8"`. Without --model, the three models run one after another.
NNCF accuracy control on EfficientNet-Lite0 ranks its 60 quantized operations on 200 samples (~5 min on this
host) and re-ranks whenever an iteration does not improve: uncapped it had run 14 min and 7 iterations (drop 0.155 ->
0.045, target 0.01) when stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bootstrap  # noqa: E402
from benchmarks.common import efficientnet_lite0, require, scratch_dir, update_model_block  # noqa: E402

TOOLS = {"edgepack": "edgepack (raspberry-pi-4 recipe)", "ort": "ORT quantize_static defaults",
         "nncf": "NNCF quantize (defaults)", "nncf_ac": "NNCF quantize_with_accuracy_control"}
MODELS = ("effnet", "fashion", "minilm")
AC_SAMPLES = 200          # NNCF accuracy control's validation subset (first samples of the scored set)
MAX_DROP = 0.01           # 1 point of accuracy (or of agreement) for NNCF accuracy control
SECTION = ("int8-peers", "INT8 peers: edgepack vs onnxruntime quantize_static vs NNCF")


@dataclass
class Setup:
    """One model's FP32 export and data. ``x``: an array (images) or {input name: array} (text)."""

    name: str
    title: str
    fp32: Path
    calib: np.ndarray | dict
    val: np.ndarray | dict
    labels: np.ndarray | None
    describe: str


# --- data, in the parent ------------------------------------------------------------------------------------


def setup_effnet(work: Path) -> Setup:
    calib, val, _ood = efficientnet_lite0(work)
    return Setup("effnet", "EfficientNet-Lite0 (pretrained)", work / "fp32.onnx", calib, val, None,
                 "200 calibration crops (calibration_data/images), 500 held-out natural crops "
                 "(`make_calibration.py --split val`); quality = top-1 agreement with FP32 (no labels)")


def setup_fashion(work: Path) -> Setup:
    from edgepack.backends import onnx as onnx_backend
    from examples.fashion_mnist.data import load_samples
    from examples.fashion_mnist.model import create_model

    calib, _ = load_samples("train", 200, seed=0)
    val, labels = load_samples("test", 2000, seed=0)
    onnx_backend.export(create_model(), (1, 3, 96, 96), work / "raw.onnx", opset=17)
    onnx_backend.simplify(work / "raw.onnx", work / "fp32.onnx")
    return Setup("fashion", "Fashion-MNIST example (EfficientNet-Lite0 backbone, 96 px)", work / "fp32.onnx",
                 calib, val, labels, "200 TRAIN images for calibration, 2,000 labelled TEST images (seed 0); "
                 "quality = accuracy drop FP32 -> INT8, points")


def setup_minilm(work: Path) -> Setup:
    from edgepack.backends import onnx as onnx_backend
    from edgepack.inputs import text
    from examples.sms_spam import data
    from examples.sms_spam.model import create_model, tokenizer_json

    text.offline_env()
    model = create_model()
    names = text.forward_input_names(model, text.tokenizer_settings(tokenizer_json(), 128)["model_input_names"])
    onnx_backend.export_args(model, text.example_inputs(names, 128), work / "raw.onnx", input_names=names,
                             opset=17)
    onnx_backend.simplify(work / "raw.onnx", work / "fp32.onnx")
    train, _ = data.load_split("train")
    pick = np.random.default_rng(0).choice(len(train), 100, replace=False)
    calib = text.tokenize([train[i] for i in sorted(pick)], tokenizer_json(), 128, names)
    texts, labels = data.load_split("test")
    return Setup("minilm", "MiniLM-L6 SMS spam classifier (1x128 tokens)", work / "fp32.onnx", calib,
                 text.tokenize(texts, tokenizer_json(), 128, names), labels,
                 f"100 TRAIN texts for calibration, the {len(labels):,} labelled TEST texts; quality = accuracy drop, "
                 "points")


def rows_of(x, start: int, stop: int):
    return {k: v[start:stop] for k, v in x.items()} if isinstance(x, dict) else x[start:stop]


def save_inputs(path: Path, x) -> None:
    np.savez(path, **(x if isinstance(x, dict) else {"input": x}))


# --- the quantizers, each in its own child -------------------------------------------------------------------


def _one_thread_sessions() -> None:
    """Every ONNX Runtime session the quantizers open (calibration, NNCF's engine) uses 1 intra-op thread."""
    import onnxruntime as ort

    original = ort.InferenceSession.__init__

    def init(self, path_or_bytes, sess_options=None, *args, **kwargs):
        sess_options = sess_options or ort.SessionOptions()
        sess_options.intra_op_num_threads, sess_options.inter_op_num_threads = 1, 1
        original(self, path_or_bytes, sess_options, *args, **kwargs)

    ort.InferenceSession.__init__ = init


def _load_npz(path: Path) -> list[dict[str, np.ndarray]]:
    """Samples of an .npz written by save_inputs, one {input name: (1, ...) array} per sample."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    n = len(next(iter(arrays.values())))
    return [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(n)]


def _import_nncf():
    """nncf 3.4's ONNX backend annotates with `EnumTypeWrapper | ...`, which protobuf 4.25 cannot evaluate
    (STACK.md): give the wrapper an __or__ first. NNCF_CI keeps its telemetry off."""
    from google.protobuf.internal import enum_type_wrapper

    wrapper = enum_type_wrapper.EnumTypeWrapper
    if "__or__" not in vars(wrapper):
        wrapper.__or__ = lambda self, other: int | other
        wrapper.__ror__ = lambda self, other: other | int
    os.environ.setdefault("NNCF_CI", "1")
    import nncf

    return nncf


def q_edgepack(fp32: Path, out: Path, calib: list[dict], kind: str, work: Path) -> dict:
    if kind == "text":
        from edgepack.backends.onnx_text_quantize import quantize_text_onnx

        joined = {k: np.concatenate([c[k] for c in calib]) for k in calib[0]}
        return quantize_text_onnx(fp32, out, joined)
    from edgepack.backends.onnx_quantize import quantize_onnx

    x = np.concatenate([c["input"] for c in calib])
    info = quantize_onnx(fp32, out, x, method="minmax", per_channel=True, target_arch="aarch64")
    return {"arithmetic": info["arithmetic"], "reduce_range": info["reduce_range"],
            "target_arch": info["target_arch"], "bias_corrected_nodes": info["bias_corrected_nodes"]}


def q_ort(fp32: Path, out: Path, calib: list[dict], kind: str, work: Path) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(out), Reader())
    return {}


def q_nncf(fp32: Path, out: Path, calib: list[dict], kind: str, work: Path) -> dict:
    import onnx

    nncf = _import_nncf()
    model = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(calib), subset_size=len(calib))
    onnx.save(model, str(out))
    return {}


def _validation_fn():
    """NNCF's validation_fn: mean of per-sample hits (top-1 == target) on the device's (reference) arithmetic;
    one cached session per model object (NNCF hands a new ModelProto for every change, and calls this once per
    sample while ranking)."""
    from edgepack.backends import onnx as onnx_backend

    cache: dict = {}

    def validate(model, items):
        if cache.get("model") is not model:
            path = Path(os.environ["PEERS_WORK"]) / "ac_candidate.onnx"
            import onnx

            onnx.save(model, str(path))
            cache.update(model=model, session=onnx_backend.session(path, 1, "reference"))
        sess = cache["session"]
        hits = [float(np.argmax(sess.run(None, feed)[0]) == y) for feed, y in items]
        return float(np.mean(hits)), hits

    return validate


def q_nncf_ac(fp32: Path, out: Path, calib: list[dict], kind: str, work: Path) -> dict:
    import onnx

    nncf = _import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    with np.load(work / "ac_targets.npz") as npz:
        targets = npz["y"]
    val = [(feed, int(y)) for feed, y in zip(_load_npz(work / "ac_val.npz"), targets, strict=True)]
    limit = int(os.environ.get("PEERS_AC_MAX_ITER", "0")) or sys.maxsize
    ranking = int(os.environ.get("PEERS_AC_RANKING", "0")) or None
    params = AdvancedAccuracyRestorerParameters(max_num_iterations=limit, ranking_subset_size=ranking,
                                                num_ranking_workers=1)
    model = nncf.quantize_with_accuracy_control(
        onnx.load(str(fp32)), nncf.Dataset(calib), nncf.Dataset(val, lambda item: item[0]), _validation_fn(),
        max_drop=MAX_DROP, subset_size=len(calib), advanced_accuracy_restorer_parameters=params)
    onnx.save(model, str(out))
    return {"max_num_iterations": None if limit == sys.maxsize else limit, "ranking_subset_size": ranking}


def q_baseline(fp32: Path, out: Path, calib: list[dict], kind: str, work: Path) -> dict:
    """No quantization: what every child holds anyway (interpreter, numpy, onnxruntime, calibration arrays)."""
    return {}


QUANTIZERS = {"baseline": q_baseline, "edgepack": q_edgepack, "ort": q_ort, "nncf": q_nncf, "nncf_ac": q_nncf_ac}


def child(tool: str, work: Path, kind: str) -> None:
    """Quantize work/fp32.onnx with ``tool``; write work/<tool>.onnx and work/<tool>.json (seconds, error)."""
    _one_thread_sessions()
    calib = _load_npz(work / "calib.npz")
    result: dict = {"tool": tool}
    t0 = time.perf_counter()
    try:
        result["info"] = QUANTIZERS[tool](work / "fp32.onnx", work / f"{tool}.onnx", calib, kind, work)
    except Exception as exc:  # noqa: BLE001 (the table records what each tool raised)
        result["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (work / f"{tool}.json").write_text(json.dumps(result))


def run_child(tool: str, work: Path, kind: str) -> dict:
    """One quantizer in a fresh process under /usr/bin/time -v: its result plus its own peak RSS (MB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PEERS_WORK": str(work), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    timing, log = work / f"{tool}.time", work / f"{tool}.log"
    with open(log, "w") as fh:
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", str(timing), sys.executable, __file__, "--child", tool,
                               "--work", str(work), "--kind", kind], env=env, stdout=fh, stderr=subprocess.STDOUT)
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing.read_text())
    result_file = work / f"{tool}.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {
        "tool": tool, "error": f"child exited {proc.returncode}: {log.read_text()[-300:]}"}
    result["peak_rss_mb"] = int(found.group(1)) / 1024 if found else None
    text = log.read_text()
    result["log_tail"] = text[-3000:]
    result["log"] = [" ".join(m.split()) for m in AC_LOG.findall(text)]
    return result


# --- scoring --------------------------------------------------------------------------------------------------


def outputs(path: Path, x, arithmetic: str) -> np.ndarray:
    from edgepack.backends import onnx as onnx_backend

    return onnx_backend.Runner(path, threads=1, arithmetic=arithmetic).run_samples(x)


def score(s: Setup, paths: dict[str, Path]) -> tuple[dict, str | None]:
    """{tool: {arithmetic: quality}} against FP32 (Classify.quality: agreement, SQNR, accuracy drop); with
    labels, also a sentence with the paired bootstrap intervals of edgepack's accuracy minus each peer's on the
    reference arithmetic (benchmarks/bootstrap.py, Classify.resampled as edgepack's builds use it)."""
    from edgepack.tasks.classify import Classify

    ref = outputs(s.fp32, s.val, "native")
    quality = {"FP32": {a: Classify().quality(ref, ref, s.labels) for a in ("native", "reference")}}
    drops = {}
    for tool, path in paths.items():
        got = {a: outputs(path, s.val, a) for a in ("native", "reference")}
        quality[tool] = {a: Classify().quality(ref, got[a], s.labels) for a in got}
        if s.labels is not None:
            drops[tool] = Classify().resampled(ref, got["reference"], s.labels, "accuracy_drop_points")
    if "edgepack" not in drops:
        return quality, None
    count = len(s.labels)
    boot = bootstrap.intervals(drops, count, 1000, [("edgepack", t) for t in drops if t != "edgepack"])
    parts = [f"{TOOLS[a]} minus {TOOLS[b]}: {lo:+.2f} to {hi:+.2f} (edgepack lower in {share:.0%} of resamples)"
             for (a, b), (lo, hi, share) in boot["diff"].items()]
    return quality, (f"Paired bootstrap ({boot['resamples']} resamples of the {count} scored samples, seed "
                     f"{boot['seed']}; benchmarks/bootstrap.py), accuracy on the reference arithmetic, 95 % "
                     "intervals of the difference in points: " + "; ".join(parts) + ".")


def census(paths: dict[str, Path], work: Path) -> dict[str, str]:
    """What ORT actually runs on this host (native, all optimizations): integer vs float compute ops and the
    Q/DQ left over, per INT8 model; explains the latency column."""
    from collections import Counter

    import onnx

    from edgepack.backends import onnx as onnx_backend

    out = {}
    for tool, path in paths.items():
        optimized = work / f"{tool}.optimized.onnx"
        onnx_backend.session(path, 1, "native", optimized_path=optimized)
        ops = Counter(n.op_type for n in onnx.load(str(optimized), load_external_data=False).graph.node)
        integer = sum(v for k, v in ops.items() if k.startswith(("QLinear", "QGemm", "MatMulInteger", "ConvInteger"))
                      or k in ("QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"))
        floats = sum(ops.get(k, 0) for k in ("Conv", "FusedConv", "MatMul", "Gemm", "FusedMatMul", "NhwcFusedConv"))
        out[tool] = (f"{integer} integer / {floats} float Conv-MatMul-Gemm, "
                     f"{ops.get('QuantizeLinear', 0)} Q + {ops.get('DequantizeLinear', 0)} DQ")
    return out


def latency(s: Setup, paths: dict[str, Path], work: Path, runs: int) -> dict:
    from edgepack.device import measure

    models = {"FP32": ("onnx", s.fp32), **{t: ("onnx", p) for t, p in paths.items()}}
    return measure.latency(models, rows_of(s.val, 0, 1), threads=1, runs=runs, workdir=work)


# --- the table ------------------------------------------------------------------------------------------------


def _quality_cells(q: dict, labelled: bool) -> list[str]:
    n, r = q["native"], q["reference"]
    if labelled:
        return [f"{n['accuracy_drop']:+.2f} / {r['accuracy_drop']:+.2f}",
                f"{n['agreement']:.3f} / {r['agreement']:.3f}", f"{n['sqnr_db']:.1f} / {r['sqnr_db']:.1f}"]
    return [f"{n['agreement']:.3f} / {r['agreement']:.3f}", f"{n['sqnr_db']:.1f} / {r['sqnr_db']:.1f}"]


def table(s: Setup, results: dict, quality: dict, lat: dict) -> str:
    labelled = s.labels is not None
    head = (["accuracy drop, points: native / reference", "agreement with FP32"] if labelled
            else ["top-1 agreement with FP32: native / reference"])
    lines = ["| tool | " + " | ".join(head) + " | SQNR dB: native / reference | INT8 MB (x FP32) | "
             "p50 ms 1 thr (x FP32) | quantize wall s | quantize peak RSS MB |",
             "|---" * (len(head) + 6) + "|"]
    fsize, fp50 = s.fp32.stat().st_size, lat["FP32"]["p50"]
    acc = f" (FP32 accuracy {quality['FP32']['native']['accuracy_fp32']:.2f} %)" if labelled else ""
    lines.append(f"| FP32{acc} | " + " | ".join(["-"] * len(head)) + f" | - | {fsize / 1e6:.2f} (1.00x) | "
                 f"{fp50:.2f} (1.00x) | - | - |")
    for tool, label in TOOLS.items():
        r = results[tool]
        if "error" in r:
            err = r["error"].replace("|", "\\|")
            lines.append(f"| {label} | **failed**: `{err}` | " + " | ".join(["-"] * (len(head) + 3))
                         + f" | {r['seconds'] if 'seconds' in r else '-'} | {_mb(r)} |")
            continue
        size = (s.fp32.parent / f"{tool}.onnx").stat().st_size
        p50 = lat[tool]["p50"]
        lines.append(f"| {label} | " + " | ".join(_quality_cells(quality[tool], labelled))
                     + f" | {size / 1e6:.2f} ({size / fsize:.2f}x) | {p50:.2f} ({p50 / fp50:.2f}x) | "
                     f"{r['seconds']:.1f} | {_mb(r)} |")
    return "\n".join(lines)


def _mb(r: dict) -> str:
    return f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"


def write_section(model: str, block: str) -> None:
    """Replace this model's block inside the section, keeping the other models' blocks."""
    update_model_block(*SECTION, "peers", MODELS, model, block, INTRO, READING)


INTRO = """\
One run per model: edgepack's INT8 ONNX, onnxruntime `quantize_static` with its defaults, NNCF `nncf.quantize` with
its defaults and NNCF `nncf.quantize_with_accuracy_control` (both on NNCF's ONNX backend), all from the same FP32 ONNX
export (opset 17, legacy exporter, onnxslim-simplified) and the same calibration samples. The edgepack row is what
`edgepack build --target raspberry-pi-4` ships when its default recipe meets the profile's budget (images:
`quantize_onnx`, minmax, per-channel, planned for aarch64: 8-bit weights, bias correction; text: the calibrated static
candidate of `quantize_text_onnx`). Quality is given under two arithmetics, **native** (this host's fused ONNX Runtime
kernels: AMD EPYC, AVX2 without VNNI, whose u8 x s8 products saturate) and **reference** (`session.disable_quant_qdq`:
exact integer products, what the Raspberry Pi's ARM kernels compute). NNCF accuracy control: validation set = the
first 200 samples of the scored set (so 200 of the scored samples are also its tuning set), max_drop 0.01 absolute
(1 point; for EfficientNet-Lite0, top-1 agreement with FP32 must stay >= 0.99), its `validation_fn` runs the
reference arithmetic at 1 thread, as edgepack validates for this target. Quantize wall s: the quantization call
alone, 1 ORT thread (imports excluded); peak RSS: that tool's child process under `/usr/bin/time -v` (interpreter,
imports and calibration arrays included). Latency: this host's native kernels, 1 thread, batch 1, p50, every model
of a table interleaved in one process; the 2 cores are shared with other work, so compare ratios within a table,
not absolute ms across tables."""
READING = """\
**Reading it** (the runs of 2026-12-02 above). On the device's arithmetic (reference), edgepack's recipe is the most
faithful one-shot quantizer on EfficientNet-Lite0 (0.964 agreement, 21.9 dB, against NNCF's 0.840 / 11.7 dB and ORT
defaults' 0.636 / 3.9 dB) and on MiniLM (0.00-point drop, against 10.86 for NNCF defaults and 7.76 for ORT
defaults); NNCF's accuracy control closes most of the gap only by reverting layers to float and by spending time: 26
min (capped at 10 iterations, 8 of 60 ops in float) for 0.936 on EfficientNet-Lite0, 8.6 min (capped) for a
1.14-point drop on MiniLM with a file 2.5x larger than edgepack's (0.65x FP32: the reverted layers include float
weights). It met its 1-point target on its own 200 validation texts (0.5 point) but not on all 967
(TEST before the 209feed repair). Where edgepack
loses: (1) on Fashion-MNIST NNCF's accuracy control is a little better: +0.05 points against edgepack's +0.30 (NNCF
defaults +0.35; ORT 14.00), 5 test images out of 2,000; the paired bootstrap puts edgepack minus NNCF accuracy
control at -1.15 to +0.65 points (edgepack lower in 66 % of resamples) and edgepack minus NNCF defaults at -0.80 to
+0.90, i.e. no difference this test set can resolve, while edgepack agrees more with FP32 (0.970 vs 0.955-0.957) at
a higher SQNR (23.4 vs 19.8-21.0 dB) and runs at 0.57x FP32 where NNCF's run at 3.2-3.3x (a Fashion run earlier that
day, with the recipe of then, had edgepack at +0.60, and +6.05 on the native kernels; the cause of the native change
was not traced); (2) on this host's own fused kernels (native) the raspberry-pi-4 EfficientNet-Lite0 is far worse
than on the device (0.710 agreement) and worse than NNCF's (0.758), because they carry 8-bit weights for ARM and
this AVX2 host saturates them: by design (edgepack's x86 targets built on this host get 7-bit weights), but anyone
who runs the Pi's model on such an x86 box sees it; (3) quantization costs more than ORT's quantize_static: 1.5-2.2x
its wall time, and more peak memory (1.17 vs 0.88 GB on EfficientNet-Lite0); on MiniLM edgepack's text path peaked
at 4.4 GB for 100 calibration texts, 2.6-4x every other tool: its percentile calibration still holds every
activation of every sample (the bounded-memory histogram fix covers the image path only). Latency on this host: only
edgepack's models ran faster than FP32 in all three (0.68-0.74x); ORT defaults 0.92-1.20x; NNCF's QDQ graphs are
mostly not fused by ORT's x86 CPU provider (MiniLM: 13 of 50 MatMul/Gemm run as integer kernels for NNCF defaults,
42 of 49 for edgepack), likely because NNCF makes an activation signed int8 wherever it has negative values
(edgepack's recipe notes ORT's x86 fusion is incomplete with int8 activations; not measured on the image models in
these runs), so NNCF's models ran 1.25-3.3x slower than FP32 here. That is host latency, not the Pi's. NNCF ran with
plain defaults: for MiniLM its documentation recommends `model_type=ModelType.TRANSFORMER`, which was not used here.
Timings are noisy: other builds shared the 2 cores (load average 2-5; FP32 EfficientNet-Lite0 p50 was 22.5 ms in
this run against 9.2 ms in the onnx-int8 table above, and the same quantizations took 25 / 19 / 23 s for edgepack /
ORT / NNCF in an aborted earlier run minutes before this one's 49 / 27 / 39 s); compare ratios within one table. The
accuracy-control validation samples are part of the scored set, which favours that row slightly."""


# --- one model ------------------------------------------------------------------------------------------------


def prepare_children(s: Setup, work: Path) -> None:
    """What the child processes read: calibration inputs, NNCF accuracy control's validation subset and targets."""
    save_inputs(work / "calib.npz", s.calib)
    sub = rows_of(s.val, 0, AC_SAMPLES)
    save_inputs(work / "ac_val.npz", sub)
    targets = s.labels[:AC_SAMPLES] if s.labels is not None else outputs(s.fp32, sub, "native").argmax(1)
    np.savez(work / "ac_targets.npz", y=np.asarray(targets, dtype=np.int64))


def run_model(model: str, runs: int) -> None:
    import importlib.metadata as md

    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    with scratch_dir(f"bench-peers-{model}-") as work:
        s = {"effnet": setup_effnet, "fashion": setup_fashion, "minilm": setup_minilm}[model](work)
        prepare_children(s, work)
        kind = "text" if isinstance(s.calib, dict) else "image"
        baseline = run_child("baseline", work, kind)["peak_rss_mb"]
        results = {}
        for tool in TOOLS:
            print(f"[{time.strftime('%H:%M:%S')}] {model}: quantizing with {tool}", flush=True)
            results[tool] = run_child(tool, work, kind)
            print(json.dumps({k: v for k, v in results[tool].items() if k != "log_tail"}), flush=True)
            if "error" in results[tool]:
                print(results[tool]["log_tail"], flush=True)
        paths = {t: work / f"{t}.onnx" for t, r in results.items() if "error" not in r}
        print(f"[{time.strftime('%H:%M:%S')}] {model}: scoring", flush=True)
        quality, paired = score(s, paths)
        print(f"[{time.strftime('%H:%M:%S')}] {model}: latency", flush=True)
        lat = latency(s, paths, work, runs)
        graphs = census(paths, work)
        minutes = (time.perf_counter() - start) / 60
        versions = ", ".join(f"{p} {md.version(p)}" for p in ("onnxruntime", "nncf", "onnx"))
        block = "\n".join([
            f"### {s.title}", "", f"{s.describe}. Whole run {minutes:.1f} min, {time.strftime('%Y-%m-%d')}, "
            f"{versions}; latency p50 of {runs} interleaved runs.", "", table(s, results, quality, lat), "",
            *_notes(results, baseline), *([paired, ""] if paired else []),
            "ORT's optimized graph on this host (native): " + "; ".join(f"{TOOLS[t]}: {c}" for t, c in graphs.items())
            + ".", "",
            f"Reproduce: `PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_int8_peers.py --model {model}"
            f"{_cap_args()}`."])
        print(block)
        print(json.dumps({"quality": quality, "latency": lat,
                          "results": {t: {k: v for k, v in r.items() if k != "log_tail"}
                                      for t, r in results.items()}}, default=str))
        write_section(model, block)


def _cap_args() -> str:
    it, rank = os.environ.get("PEERS_AC_MAX_ITER", "0"), os.environ.get("PEERS_AC_RANKING", "0")
    return (f" --ac-max-iterations {it}" if it != "0" else "") + (f" --ac-ranking-subset {rank}" if rank != "0" else "")


AC_LOG = re.compile(r"(Accuracy drop[^\n]*|\d+ out of \d+ were reverted|Algorithm completed[^\n]*|"
                    r"The algorithm could not achieve[^\n]*|Maximum number of iteration was reached)")


def _ac_summary(lines: list[str]) -> str:
    """NNCF accuracy control's log, shortened: first and last drop on its validation subset, how it ended."""
    found = (re.search(r"(-?\d+\.\d+(?:e-?\d+)?) \(absolute\)", line) for line in lines)
    drops = [float(m.group(1)) for m in found if m]
    ends = [line.rstrip(".:") for line in lines if not line.startswith("Accuracy drop")]
    steps = sum(1 for line in lines if line.startswith("Accuracy drop with the new"))
    told = f"drop on its 200 samples {drops[0]:.3f} after plain quantization" if drops else "no drop logged"
    if steps:
        told += f", {drops[-1]:.3f} after {steps} iteration(s)"
    return "; ".join([told, *ends])


def _notes(results: dict, baseline: float) -> list[str]:
    ac = results["nncf_ac"]
    info = ac.get("info") or {}
    notes = [f"Peak RSS of a child that only loads onnxruntime and the calibration arrays: {baseline:.0f} MB."]
    if ac.get("log"):
        notes.append(f"NNCF accuracy control ({ac.get('seconds', 0) / 60:.1f} min): {_ac_summary(ac['log'])}.")
    if info.get("max_num_iterations") or info.get("ranking_subset_size"):
        notes.append(f"NNCF accuracy control capped to finish in this run's time budget: max_num_iterations="
                     f"{info['max_num_iterations'] or 'default'}, ranking_subset_size="
                     f"{info['ranking_subset_size'] or 'default (300, i.e. all 200)'}.")
    return [*notes, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=MODELS, help="run one model (default: all three, one after another)")
    ap.add_argument("--runs", type=int, default=100, help="latency: interleaved timed runs per model")
    ap.add_argument("--ac-max-iterations", type=int, default=0,
                    help="cap NNCF accuracy control's iterations (layers reverted to float); 0 = NNCF's default")
    ap.add_argument("--ac-ranking-subset", type=int, default=0,
                    help="samples NNCF accuracy control ranks layers on; 0 = NNCF's default (300, capped at the set)")
    ap.add_argument("--child", choices=list(QUANTIZERS), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--kind", choices=("image", "text"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    require("nncf")
    if args.child:
        child(args.child, args.work, args.kind)
        return
    os.environ["PEERS_AC_MAX_ITER"] = str(args.ac_max_iterations)
    os.environ["PEERS_AC_RANKING"] = str(args.ac_ranking_subset)
    for model in [args.model] if args.model else MODELS:
        run_model(model, args.runs)


if __name__ == "__main__":
    main()
