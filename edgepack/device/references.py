"""The reference models of the device latency estimator (edgepack.estimate): built here offline with random
weights, their operators counted (cached once per architecture) and, where the estimator uses it, their host
INT8 latency timed (cached per host and toolchain; pinned, warmed up, median of interleaved runs in a clean child).

Cache: ``~/.cache/edgepack`` (``EDGEPACK_CACHE`` overrides): reference_features.json, reference_timings.json and
the anchor models used to correct later timings for host drift.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgepack.device import measure
from edgepack.errors import EdgepackError, InputError
from edgepack.targets import Reference
from edgepack.util import write_bytes_atomic

log = logging.getLogger(__name__)

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
        from edgepack.backends.onnx_quantize import quantize_onnx  # noqa: F401
        return "edgepack"
    except ImportError:
        return "ort-quantize_static-qdq-per-channel"


def ref_id(model: str, size: int, precision: str) -> str:
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
    from edgepack.backends import onnx as onnx_backend

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
    from edgepack.backends import tflite

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
    from edgepack.backends.onnx_quantize import quantize_onnx
    from edgepack.util import quiet_root_logger

    with quiet_root_logger():  # ORT's "consider pre-processing" advice, once per reference, is not for users
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
    missing = [w for w in wanted if ref_id(*w) not in known]
    groups: dict[tuple[int, str], list[str]] = {}
    for model, size, precision in missing:
        groups.setdefault((size, precision), []).append(model)
    for (size, precision), models in sorted(groups.items()):
        if progress:
            progress(f"timing {len(models)} reference model(s) on the host ({fmt} {precision}, {size}px)", 0, 1)
        known.update(_time_group(models, size, fmt, precision))
        _write_cache(cache)
    return {ref_id(*w): known[ref_id(*w)] for w in wanted}


def _build_in_child(model: str, size: int, fmt: str, precision: str, workdir: Path) -> Path:
    """build_reference in a child process: LiteRT can abort() the whole process on some converted
    INT8 models (seen in allocate_tensors), which must cost only that reference, not the build."""
    from edgepack import isolate

    return isolate.call(build_reference, model, size, fmt, precision, workdir, key="reference",
                        step=f"building reference model {model} ({fmt} {precision})")


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
                failed[ref_id(m, size, precision)] = None
        if not paths:
            return failed
        x = np.random.default_rng(1).normal(0, 1, (1, 3, size, size)).astype(np.float32)
        res = _latency(paths, x, fmt, work)
        for m in sorted(set(paths) - set(res)):
            failed[ref_id(m, size, precision)] = None
        if res:
            _keep_anchor({m: paths[m] for m in res}, res, fmt, size, precision)
        return {**failed, **{ref_id(m, size, precision): res[m]["p50"] for m in res}}
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
    from edgepack.device import opcount

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


# ---------------------------------------------------------------- timing a model against a cached anchor

def measure_with_anchor(model_path: Path, fmt: str, precision: str, refs: list[Reference]) -> tuple[float, float]:
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
    from edgepack import backends

    shape = list(backends.get(fmt).io_details(model_path)["inputs"][0]["shape"])
    if fmt == "tflite" and len(shape) == 4:
        shape = [shape[0], shape[3], shape[1], shape[2]]  # TFLite is NHWC; the runners take NCHW
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    return np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
