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

Every estimate is labelled kind "estimated-device". Units: ms.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import measure
from .errors import EdgepackError, InputError
from .targets import Reference, TargetProfile
from .util import write_bytes_atomic

log = logging.getLogger(__name__)

KIND = "estimated-device"
HOST_THREADS = 1        # references and models are timed at one thread: the stable, comparable number here
REF_RUNS = 15           # timed runs per reference (after measure.WARMUP_RUNS warm-up runs)
CALIB_SAMPLES = 8       # seeded random calibration samples for the reference models' INT8 versions
CACHE_VERSION = 1
MODEL_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
                "inception_v3": {"aux_logits": False, "init_weights": False}}


# ---------------------------------------------------------------- host timings of the references (cached)

def cache_dir() -> Path:
    """Where reference timings and anchor models are kept: $EDGEPACK_CACHE or ~/.cache/edgepack."""
    return Path(os.environ.get("EDGEPACK_CACHE") or Path.home() / ".cache" / "edgepack")


def host_key(fmt: str) -> str:
    """Identifies timings that stay valid: CPU model, runtime version, format, quantizer, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}|{fmt}|{_runtime_version(fmt)}|{_quantizer_name()}|threads={HOST_THREADS}|v{CACHE_VERSION}"


def _runtime_version(fmt: str) -> str:
    import importlib.metadata as md

    name = "onnxruntime" if fmt == "onnx" else "ai-edge-litert"
    try:
        return f"{name} {md.version(name)}"
    except md.PackageNotFoundError:
        return f"{name} ?"


def _quantizer_name() -> str:
    try:
        from .backends.onnx_quantize import quantize_onnx  # noqa: F401
        return "edgepack"
    except ImportError:
        return "ort-quantize_static-qdq-per-channel"


def _ref_id(model: str, size: int, precision: str) -> str:
    return f"{model}@{size}:{precision}"


def _cache_file() -> Path:
    return cache_dir() / "reference_timings.json"


def _read_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_cache(data: dict) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:  # a read-only home must not break a build; it only makes the next one slower
        log.warning("cannot write the reference timing cache %s: %s", path, exc)


def build_reference(model: str, size: int, fmt: str, precision: str, workdir: Path) -> Path:
    """Build one reference model (random weights, seed 0) as ``fmt``/``precision`` in workdir; return its path."""
    from .backends import onnx as onnx_backend

    workdir.mkdir(parents=True, exist_ok=True)
    fp32 = workdir / f"{model}_{size}_fp32.onnx"
    if not fp32.exists():
        raw = workdir / f"{model}_{size}_raw.onnx"
        onnx_backend.export(_torchvision(model), (1, 3, size, size), raw, opset=17)
        onnx_backend.simplify(raw, fp32)
        raw.unlink()
    calib = np.random.default_rng(0).normal(0, 1, (CALIB_SAMPLES, 3, size, size)).astype(np.float32)
    if fmt == "onnx":
        return fp32 if precision == "fp32" else _quantize_onnx(fp32, workdir / f"{model}_{size}_int8.onnx", calib)
    from .backends import tflite

    return tflite.convert(fp32, workdir / f"tflite_{precision}", None if precision == "fp32" else calib,
                          io_dtype="int8", allow_float=True)


def _torchvision(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    if name in EXTRA_MODELS:
        return EXTRA_MODELS[name]().eval()
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise InputError(f"reference model '{name}' is not a torchvision classification architecture",
                         hint="use names from torchvision.models.list_models(), e.g. resnet18, or "
                              + ", ".join(sorted(EXTRA_MODELS)))
    return torchvision.models.get_model(name, weights=None, **MODEL_KWARGS.get(name, {})).eval()


def _mobilenet_v1():
    """MobileNet V1 1.0 (Howard et al. 2017, Table 1): not in torchvision, but many published tables use it."""
    from torch import nn

    def block(cin: int, cout: int, stride: int, groups: int = 1, k: int = 3) -> list:
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    layers = block(3, 32, 2)
    cin = 32
    for cout, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
                         (512, 1), (512, 1), (1024, 2), (1024, 1)):
        layers += block(cin, cin, stride, groups=cin) + block(cin, cout, 1, k=1)
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000))


EXTRA_MODELS = {"mobilenet_v1": _mobilenet_v1}


def _quantize_onnx(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    """INT8 QDQ with edgepack's own recipe, so references are quantized like the models they estimate."""
    from .backends.onnx_quantize import quantize_onnx

    quantize_onnx(fp32, out, calib, method="minmax", per_channel=True)
    return out


def host_timings(refs: tuple[Reference, ...], fmt: str, *, progress=None) -> dict[str, float | None]:
    """Host p50 (ms, one thread) of every reference model, from the cache or measured now (then cached).

    None marks a reference that could not be built in ``fmt`` on this host; it is left out of fits.
    """
    cache = _read_cache()
    key = host_key(fmt)
    known = cache.setdefault(key, {})
    wanted = sorted({(r.model, r.input_size, r.precision) for r in refs})
    missing = [w for w in wanted if _ref_id(*w) not in known]
    groups: dict[tuple[int, str], list[str]] = {}
    for model, size, precision in missing:
        groups.setdefault((size, precision), []).append(model)
    for (size, precision), models in sorted(groups.items()):
        if progress:
            progress(f"timing {len(models)} reference model(s) on the host ({fmt} {precision}, {size}px)", 0, 1)
        known.update(_time_group(models, size, fmt, precision))
        _write_cache(cache)
    return {_ref_id(*w): known[_ref_id(*w)] for w in wanted}


def _build_in_child(model: str, size: int, fmt: str, precision: str, workdir: Path) -> Path:
    """build_reference in a child process: LiteRT can abort() the whole process on some converted
    INT8 models (seen in allocate_tensors), which must cost only that reference, not the build."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from edgepack.estimate import build_reference; "
            "print(build_reference(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], Path(sys.argv[5])))")
    proc = subprocess.run([sys.executable, "-c", code, model, str(size), fmt, precision, str(workdir)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"converter failed or crashed (exit {proc.returncode}): "
                           + (proc.stderr.strip().splitlines() or ["?"])[-1][:200])
    return Path(proc.stdout.strip().splitlines()[-1])


def _time_group(models: list[str], size: int, fmt: str, precision: str) -> dict[str, float | None]:
    """Build and time models of one input size and precision, interleaved in one child process.

    A reference that cannot be built in this format (a converter failure) is recorded as None and left
    out of the fit, with the reason logged, rather than failing every estimate for the target.
    """
    work = Path(tempfile.mkdtemp(prefix="edgepack-refs-"))
    try:
        paths, failed = {}, {}
        for m in models:
            try:
                paths[m] = (build_reference(m, size, fmt, precision, work / m) if fmt == "onnx"
                            else _build_in_child(m, size, fmt, precision, work / m))
            except Exception as exc:  # noqa: BLE001 - any converter failure only drops this reference
                log.warning("reference %s (%s %s) cannot be built: %s", m, fmt, precision, str(exc)[:200])
                failed[_ref_id(m, size, precision)] = None
        if not paths:
            return failed
        x = np.random.default_rng(1).normal(0, 1, (1, 3, size, size)).astype(np.float32)
        res = _latency(paths, x, fmt, work)
        for m in sorted(set(paths) - set(res)):
            failed[_ref_id(m, size, precision)] = None
        if res:
            _keep_anchor({m: paths[m] for m in res}, res, fmt, size, precision)
        return {**failed, **{_ref_id(m, size, precision): res[m]["p50"] for m in res}}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _latency(paths: dict[str, Path], x: np.ndarray, fmt: str, work: Path) -> dict:
    """Interleaved timings of all models; if the runtime rejects one, time each alone and drop the failures."""
    try:
        return measure.latency({m: (fmt, p) for m, p in paths.items()}, x, threads=HOST_THREADS, runs=REF_RUNS,
                               workdir=work)
    except EdgepackError as exc:
        log.warning("timing the references together failed (%s); timing them one by one", exc)
    out = {}
    for m, p in paths.items():
        try:
            out.update(measure.latency({m: (fmt, p)}, x, threads=HOST_THREADS, runs=REF_RUNS, workdir=work))
        except EdgepackError as exc:
            log.warning("reference %s cannot run on this host's %s runtime: %s", m, fmt, exc)
    return out


def _anchor_path(fmt: str, size: int, precision: str) -> Path:
    return cache_dir() / "anchors" / f"{fmt}_{size}_{precision}.{'onnx' if fmt == 'onnx' else 'tflite'}"


def _keep_anchor(paths: dict[str, Path], res: dict, fmt: str, size: int, precision: str) -> None:
    """Keep the fastest reference of the group as the anchor for same-run drift correction."""
    fastest = min(paths, key=lambda m: res[m]["p50"])
    dst = _anchor_path(fmt, size, precision)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths[fastest], dst)
        (dst.parent / (dst.name + ".json")).write_text(json.dumps({"model": fastest, "p50": res[fastest]["p50"]}))
    except OSError as exc:
        log.warning("cannot keep the anchor model: %s", exc)


# ---------------------------------------------------------------- operator counts of the references (cached)

def reference_features(refs, *, progress=None) -> dict[str, dict[str, float]]:
    """Operator-class counts (edgepack.opcount) of every reference architecture, keyed ``model@size``.

    Counted from an ONNX export with random weights; host-independent, so cached once per architecture.
    """
    from . import opcount

    path = cache_dir() / "reference_features.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        known = {}
    if known.get("version") != opcount.VERSION:
        known = {"version": opcount.VERSION}
    missing = sorted({(r.model, r.input_size) for r in refs if f"{r.model}@{r.input_size}" not in known})
    if missing and progress:
        progress(f"counting operators of {len(missing)} reference model(s)", 0, 1)
    for model, size in missing:
        work = Path(tempfile.mkdtemp(prefix="edgepack-refs-"))
        try:
            known[f"{model}@{size}"] = opcount.count(build_reference(model, size, "onnx", "fp32", work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if missing:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, (json.dumps(known, indent=1, sort_keys=True) + "\n").encode())
        except OSError as exc:
            log.warning("cannot write the reference feature cache %s: %s", path, exc)
    return {f"{r.model}@{r.input_size}": known[f"{r.model}@{r.input_size}"] for r in refs}


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
    x = np.array([model.int8_terms(feats[_key(r)], host.get(_ref_id(r.model, r.input_size, "int8"))) for r in q])
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
        h = host.get(_ref_id(ref.model, ref.input_size, precision))
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
    from . import opcount

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
        host_p50_ms, drift = _measure_with_anchor(Path(model_path), fmt, precision,
                                                  [r for r in refs if host.get(_ref_id(r.model, r.input_size,
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


def _measure_with_anchor(model_path: Path, fmt: str, precision: str, refs: list[Reference]) -> tuple[float, float]:
    """(model host p50 ms, drift = anchor p50 now / anchor p50 cached), timed back to back.

    The anchor has its own input size, so it runs in its own child right before the model's.
    """
    size = min(r.input_size for r in refs)
    anchor = _anchor_path(fmt, size, precision)
    meta = anchor.parent / (anchor.name + ".json")
    work = Path(tempfile.mkdtemp(prefix="edgepack-est-"))
    try:
        drift = 1.0
        if anchor.exists() and meta.exists():
            xa = np.random.default_rng(1).normal(0, 1, (1, 3, size, size)).astype(np.float32)
            now = measure.latency({"a": (fmt, anchor)}, xa, threads=HOST_THREADS, runs=REF_RUNS, workdir=work)
            drift = now["a"]["p50"] / json.loads(meta.read_text())["p50"]
        res = measure.latency({"m": (fmt, model_path)}, _model_input(model_path, fmt), threads=HOST_THREADS,
                              runs=REF_RUNS, workdir=work)
        return res["m"]["p50"], drift
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _model_input(model_path: Path, fmt: str) -> np.ndarray:
    """A seeded NCHW float32 input of the model's own shape."""
    from . import backends

    shape = list(backends.get(fmt).io_details(model_path)["inputs"][0]["shape"])
    if fmt == "tflite" and len(shape) == 4:
        shape = [shape[0], shape[3], shape[1], shape[2]]  # TFLite is NHWC; the runners take NCHW
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    return np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)


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
