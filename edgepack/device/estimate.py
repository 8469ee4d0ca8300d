"""Device latency estimates from a per-operator-class cost model, fitted to the profile's published references.

The host is not the device, so a host latency is never reported as a device one. Instead:

1. Every reference model of the profile ([[reference]]: torchvision architecture, or MobileNet V1 which is
   built here, input size, precision, published device latency) is exported to ONNX here with random weights and
   its operators are counted (edgepack.opcount, from ONNX shape inference). Counts are cached in
   ``~/.cache/edgepack`` (``EDGEPACK_CACHE`` overrides). No build in the target's format is needed.
2. FP32: device ms = a x GEMM-like MACs (dense convolutions of any kernel, 1x1 convolutions, Gemm/MatMul)
   + b x depthwise/grouped MACs + c x layers, non-negative, fitted by least squares on relative error over the
   FP32 references (FP32_TERMS: 3 parameters, so 5-10 references do not leave the fit underdetermined).
3. INT8: device ms = a x (the FP32 estimate of the same network) [+ c x its host INT8 p50], non-negative,
   fitted on the INT8 references. The host term is used only when every INT8 reference was measured with the
   profile's own runtime and can be built and timed here (pinned, warmed up, median of interleaved runs in a
   clean child; cached per host and toolchain): another runtime's INT8 speed-up is not the host build's.
4. The error band comes from leave-one-out: each reference is predicted by a model fitted without any
   reference of the same architecture family (its other-precision sibling, other input sizes and width
   multipliers included, see ``family``; feature scaling is computed on the training rows only); the band
   spans the smallest and largest of those prediction errors. With n references the band is only as good as
   n, and references from a proxy device or another runtime (see the profiles' comments) widen it.
5. When this module times the model itself (INT8 with a host term and no given host p50), it also re-times one
   cached reference (the "anchor") in the same child process and scales by the anchor's drift.

Every estimate is labelled kind "estimated-device". Units: ms. Building, counting and timing the references
(steps 1, 3 and 5) lives in edgepack.references.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.device.references import host_timings, measure_with_anchor, ref_id, reference_features
from edgepack.errors import InputError
from edgepack.targets import Reference, TargetProfile

log = logging.getLogger(__name__)

KIND = "estimated-device"


# ---------------------------------------------------------------- the cost model, its fit and leave-one-out

def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares by enumerating active sets (exact; fine for the <= 8 columns used here)."""
    best, best_res = np.zeros(a.shape[1]), float(np.sum(b ** 2))
    for mask in range(1, 2 ** a.shape[1]):
        cols = [j for j in range(a.shape[1]) if mask >> j & 1]
        x, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
        if np.all(x >= 0):
            res = float(np.sum((a[:, cols] @ x - b) ** 2))
            if res < best_res - 1e-12:
                best, best_res = np.zeros(a.shape[1]), res
                best[cols] = x
    return best


def _fit_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the squared relative error of x @ c against y.

    Columns are scaled by their maximum over these (training) rows only, so a held-out row never leaks in.
    """
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    return nnls(x / scale / y[:, None], np.ones(len(y))) / scale


# FP32 terms: operator-count classes summed into the few that behave differently on every CPU runtime seen:
# GEMM-like MACs (dense convolutions of any kernel, 1x1 convolutions, Gemm/MatMul), depthwise/grouped MACs
# (few MACs per byte moved), and a per-layer overhead. Three coefficients, so a leave-one-out fit on 5-10
# references is not underdetermined (a 6-class fit was, and missed by up to 2.4x).
FP32_TERMS = {"macs_gemm": ("macs_winograd", "macs_dense", "macs_pointwise"),
              "macs_depthwise": ("macs_depthwise",),
              "layers": ("layers",)}
INT8_TERMS = ("fp32_estimate", "host_int8_ms")
RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}


def fp32_terms(feats: dict[str, float]) -> list[float]:
    """The FP32 cost model's inputs (FP32_TERMS) from edgepack.opcount counts."""
    return [sum(feats[f] for f in parts) for parts in FP32_TERMS.values()]


@dataclass(frozen=True)
class CostModel:
    """FP32: ms = sum(fp32_coef[t] * term[t]) over FP32_TERMS. INT8: ms = a * (the FP32 estimate of the same
    network) + c * (its host INT8 p50, when every INT8 reference has one)."""

    fp32_coef: dict[str, float]
    int8_coef: dict[str, float] | None = None

    def fp32_ms(self, feats: dict[str, float]) -> float:
        return float(np.dot([self.fp32_coef[t] for t in FP32_TERMS], fp32_terms(feats)))

    def int8_terms(self, feats: dict[str, float], host_ms: float | None) -> list[float]:
        return [self.fp32_ms(feats), host_ms or 0.0]

    def predict(self, precision: str, feats: dict[str, float], host_ms: float | None = None) -> float:
        if precision == "fp32":
            return self.fp32_ms(feats)
        return float(np.dot([self.int8_coef[t] for t in INT8_TERMS], self.int8_terms(feats, host_ms)))


def _key(r: Reference) -> str:
    return f"{r.model}@{r.input_size}"


def family(model: str) -> str:
    """The architecture a reference belongs to for leave-one-out: its name without a trailing width multiplier
    (mnasnet0_5, mnasnet1_3 -> mnasnet; squeezenet1_0, squeezenet1_1 -> squeezenet). Input sizes never split a
    family. Depth variants with their own block design (resnet18 vs resnet50) stay separate architectures."""
    return re.sub(r"\d+_\d+$", "", model)


def fit_model(refs: list[Reference], feats: dict, host: dict, precision: str) -> CostModel:
    """Fit the cost model for ``precision`` on ``refs`` (both precisions are used for INT8)."""
    fp = [r for r in refs if r.precision == "fp32"]
    if len(fp) < 2:
        raise InputError("the profile needs at least 2 FP32 reference latencies for the cost model",
                         hint="add [[reference]] entries with precision = \"fp32\" to the profile")
    coef = _fit_relative(np.array([fp32_terms(feats[_key(r)]) for r in fp]), np.array([r.latency_ms for r in fp]))
    model = CostModel(dict(zip(FP32_TERMS, coef.tolist(), strict=True)))
    if precision == "fp32":
        return model
    q = [r for r in refs if r.precision == "int8"]
    x = np.array([model.int8_terms(feats[_key(r)], host.get(ref_id(r.model, r.input_size, "int8"))) for r in q])
    return CostModel(model.fp32_coef, dict(zip(INT8_TERMS, _fit_relative(x, np.array([r.latency_ms for r in q]))
                                                .tolist(), strict=True)))


@dataclass(frozen=True)
class Fit:
    """The cost model for one precision, with its leave-one-out rows and error band (factors)."""

    precision: str
    model: CostModel
    rows: list[dict]
    band: tuple[float, float]   # (low, high) multipliers of the point estimate


def fit(refs: list[Reference], feats: dict, host: dict, precision: str) -> Fit:
    """Cost model for ``precision`` on all references, and its leave-one-out error band.

    Leave-one-out: each ``precision`` reference is predicted by a model fitted without any reference of the
    same architecture (so an INT8 reference's FP32 sibling is excluded too, and so is everything it adds to
    the feature scaling). The band spans the smallest and largest of those prediction errors.
    """
    mine = [r for r in refs if r.precision == precision]
    if len(mine) < 2:
        raise InputError(f"the profile has fewer than 2 {precision.upper()} reference latencies",
                         hint="add [[reference]] entries with precision = \"" + precision + "\" to the profile")
    rows = []
    for ref in mine:
        train = [r for r in refs if family(r.model) != family(ref.model)]
        h = host.get(ref_id(ref.model, ref.input_size, precision))
        try:
            predicted = fit_model(train, feats, host, precision).predict(precision, feats[_key(ref)], h)
        except InputError:
            predicted = float("nan")
        ok = predicted > 0
        rows.append({"model": ref.model, "input_size": ref.input_size, "precision": precision,
                     "host_ms": round(h, 3) if h else None, "published_ms": ref.latency_ms,
                     "predicted_ms": round(predicted, 3) if ok else None,
                     "error": round(predicted / ref.latency_ms - 1, 4) if ok else None})
    errors = [r["error"] for r in rows if r["error"] is not None]
    band = (1 / (1 + max(errors)), 1 / (1 + min(errors))) if errors else (float("nan"), float("nan"))
    return Fit(precision, fit_model(refs, feats, host, precision), rows, (round(band[0], 4), round(band[1], 4)))


def _inputs(profile: TargetProfile, fmt: str, *, progress=None) -> tuple[dict, dict]:
    """(operator counts of every reference, host INT8 p50 of the INT8 references where buildable).

    The host INT8 timing is a term of the INT8 model only when every INT8 reference was measured with the
    runtime of ``fmt`` (the one timed here): edgepack's host INT8 build (its quantizer's op placement, that
    runtime's kernels) says nothing about another runtime's INT8 speed-up on the device.
    """
    feats = reference_features(profile.reference, progress=progress)
    int8 = tuple(r for r in profile.reference if r.precision == "int8")
    if any(r.runtime != RUNTIME_OF_FORMAT.get(fmt) for r in int8):
        return feats, {}
    host = host_timings(int8, fmt, progress=progress) if int8 else {}
    if not all(host.values()):  # the host term is used for all INT8 references or for none
        log.info("%d INT8 reference(s) cannot be built as %s here; the INT8 cost model runs without the host term",
                 sum(1 for v in host.values() if not v), fmt)
        host = {}
    return feats, host


def leave_one_out(profile: TargetProfile, fmt: str | None = None, *, progress=None) -> list[dict]:
    """Leave-one-out rows (host, published, predicted ms, relative error) for every reference of the profile."""
    fmt = fmt or profile.formats[0]
    feats, host = _inputs(profile, fmt, progress=progress)
    rows = []
    for precision in sorted({r.precision for r in profile.reference}):
        rows += fit(list(profile.reference), feats, host, precision).rows
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text leave-one-out table (host ms: the INT8 host timing used as a term, when there is one)."""
    head = f"{'model':<24}{'prec':<6}{'host ms':>9}{'published':>11}{'predicted':>11}{'error':>9}"
    lines = [head]
    for r in rows:
        host = "-" if r["host_ms"] is None else f"{r['host_ms']:.2f}"
        pred = "n/a" if r["predicted_ms"] is None else f"{r['predicted_ms']:.2f}"
        err = "n/a" if r["error"] is None else f"{r['error']:+.1%}"
        lines.append(f"{r['model'] + '@' + str(r['input_size']):<24}{r['precision']:<6}{host:>9}"
                     f"{r['published_ms']:>11.2f}{pred:>11}{err:>9}")
    errors = [abs(r["error"]) for r in rows if r["error"] is not None]
    if errors:
        lines.append(f"max |error| {max(errors):.1%} over {len(errors)} references")
    return "\n".join(lines)


# ---------------------------------------------------------------- the estimate

def estimate(model_path: Path, fmt: str, precision: str, profile: TargetProfile,
             host_p50_ms: float | None = None, *, graph_path: Path | None = None, progress=None) -> dict:
    """Device latency estimate (ms) for one model file, labelled "estimated-device", with its error band.

    ``graph_path``: an ONNX file of the same network whose operators are counted (default: ``model_path``,
    which must then be ONNX). ``host_p50_ms``: the model's host p50 at one thread, if already measured (e.g.
    the validate stage's ``one_thread`` numbers); only INT8 uses it, and only when the profile's INT8
    references have host timings. If it is needed and not given, the model is timed here together with the
    cached anchor reference.
    """
    from edgepack.device import opcount

    refs = [r for r in profile.reference if r.precision == precision]
    if len(refs) < 2:
        raise InputError(f"{profile.name}: {len(refs)} {precision.upper()} reference(s); at least 2 are needed "
                         "for an estimate with an error band",
                         hint="add [[reference]] entries to the profile, or measure on the device (edgepack bench)")
    graph = Path(graph_path or model_path)
    if graph.suffix != ".onnx":
        raise InputError(f"cannot count the operators of {graph.name}: the cost model reads ONNX graphs",
                         hint="pass graph_path= the ONNX export of the same network")
    feats, host = _inputs(profile, fmt, progress=progress)
    f = fit(list(profile.reference), feats, host, precision)
    counts = opcount.count(graph)
    drift, method = 1.0, "not used"
    uses_host = precision == "int8" and f.model.int8_coef["host_int8_ms"] > 0
    if uses_host and host_p50_ms is None:
        host_p50_ms, drift = measure_with_anchor(Path(model_path), fmt, precision,
                                                  [r for r in refs if host.get(ref_id(r.model, r.input_size,
                                                                                       precision))])
        method = "timed with an anchor reference in the same process"
    elif uses_host:
        method = "given host p50"
    p50 = f.model.predict(precision, counts, host_p50_ms / drift if uses_host else None)
    n = sum(1 for r in f.rows if r["error"] is not None)
    return {"kind": KIND, "target": profile.name, "format": fmt, "precision": precision,
            "p50": round(p50, 3), "band": [round(p50 * f.band[0], 3), round(p50 * f.band[1], 3)],
            "band_source": f"leave-one-out over {n} published {precision.upper()} references",
            "method": "per-operator-class cost model fitted to the profile's published references"
                      + (" plus the host INT8 timing" if uses_host else ""),
            "operator_counts": {k: round(v) for k, v in counts.items()},
            "coefficients": {k: float(f"{v:.4g}") for k, v in
                             (f.model.fp32_coef if precision == "fp32" else f.model.int8_coef).items()},
            "host_p50_one_thread": round(host_p50_ms, 3) if uses_host else None,
            "host_drift": round(drift, 4), "host_method": method, "device_threads": sorted({r.threads for r in refs}),
            "references": f.rows}


# ---------------------------------------------------------------- when INT8 will not pay off on the target

COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def int8_warnings(profile: TargetProfile, fmt: str, *, int8_path: Path | None = None,
                  estimates: dict[str, dict] | None = None) -> list[str]:
    """Messages when INT8 is likely slower than FP32 on the target, or parts of it fall back to float.

    Uses the device's ISA features, the profile's own FP32/INT8 reference pairs, the estimates
    (``{"fp32": estimate(...), "int8": estimate(...)}``) when given, and the INT8 model's float compute ops.
    """
    out = _isa_warnings(profile, fmt) + _reference_pair_warnings(profile)
    if estimates and {"fp32", "int8"} <= set(estimates):
        ratio = estimates["int8"]["p50"] / estimates["fp32"]["p50"]
        if ratio > 0.95:
            out.append(f"{profile.name}: estimated INT8 p50 is {ratio:.2f}x the FP32 estimate on the device "
                       f"(estimates, not measurements: {estimates['int8']['band_source']})")
    if int8_path is not None and fmt == "onnx":
        floats = onnx_float_compute_ops(Path(int8_path))
        if floats:
            out.append(f"{len(floats)} compute op(s) stay in FP32 in the INT8 ONNX model (each costs a "
                       f"dequantize/quantize round trip): {', '.join(floats[:8])}")
    return out


def _isa_warnings(profile: TargetProfile, fmt: str) -> list[str]:
    feats = set(profile.simd_features)
    if not profile.isa.startswith("armv") or "dotprod" in feats:
        return []
    if profile.runtime == "onnxruntime":
        return [f"{profile.name}: {profile.cpu} ({profile.isa}) has no ARM dot-product instructions (SDOT/UDOT); "
                "ONNX Runtime's INT8 GEMM falls back to widening multiplies there, so INT8 gains are small and "
                "INT8 can be slower than FP32 for models with many small or depthwise convolutions"]
    return [f"{profile.name}: {profile.cpu} ({profile.isa}) has no ARM dot-product instructions; "
            f"{profile.runtime}'s INT8 kernels gain less over FP32 than on ARMv8.2+ cores"]


def _reference_pair_warnings(profile: TargetProfile) -> list[str]:
    """Published FP32/INT8 pairs of the same model on this device where INT8 was the slower one."""
    by = {(r.model, r.input_size, r.runtime, r.threads, r.precision): r.latency_ms for r in profile.reference}
    slower = []
    for (model, size, runtime, threads, precision), ms in sorted(by.items()):
        fp32 = by.get((model, size, runtime, threads, "fp32"))
        if precision == "int8" and fp32 and ms > fp32:
            slower.append(f"{model} {ms / fp32:.2f}x ({runtime})")
    if not slower:
        return []
    runtimes = sorted({r.runtime for r in profile.reference})
    caveat = "" if runtimes == [profile.runtime] else f" (runtime {', '.join(runtimes)}, not {profile.runtime})"
    return [f"{profile.name}: published references{caveat} show INT8 slower than FP32 on this device for "
            + ", ".join(slower)]


def onnx_float_compute_ops(path: Path) -> list[str]:
    """Names of Conv/MatMul/Gemm nodes in a QDQ model whose data input is not dequantized INT8 (they run FP32)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return [n.name or n.op_type for n in model.graph.node
            if n.op_type in COMPUTE_OPS and producer.get(n.input[0]) != "DequantizeLinear"]
