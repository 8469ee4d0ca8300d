"""Target profiles: one TOML file per device in targets/, validated against TargetProfile.

A profile says which formats to produce, how to run them (runtime, threads), the facts about the
device that matter for INT8 speed, and the budgets a build must meet. The name is the file stem.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgepack import schema
from edgepack.errors import ConfigError, InputError, did_you_mean
from edgepack.schema import spec

FORMATS = ("onnx", "tflite")
CALIB_METHODS = ("minmax", "entropy", "percentile")
LATENCY_KINDS = ("host", "device-estimate", "emulated", "device")
PRECISIONS = ("fp32", "int8")
QEMU_CPUS = ("", "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1", "a64fx", "max")
ROOTFS_RELEASES = ("bookworm",)
DEVICE_WHEELS = ("onnxruntime==1.23.0", "numpy==1.26.4", "ai-edge-litert==2.1.0", "pillow==11.3.0")


@dataclass(frozen=True)
class Reference:
    """One published latency for this device (or a stated proxy of it): a [[reference]] table. Units: ms, px."""

    model: str = spec("torchvision architecture name, built offline with random weights (e.g. resnet18)")
    runtime: str = spec("runtime that produced the figure, e.g. ncnn, onnxruntime, litert")
    threads: int = spec("threads used for the figure", ge=1, le=64)
    precision: str = spec("numeric precision of the measured model", choices=PRECISIONS)
    latency_ms: float = spec("published latency for one batch-1 inference, ms", ge=0.001, le=1e7)
    device: str = spec("the device that was measured (may be a proxy for the profile's device; then say so)")
    source: str = spec("where the figure is published: document, section and line/row")
    statistic: str = spec("which statistic was published", "mean", choices=("mean", "p50", "min"))
    input_size: int = spec("square input side the figure was measured at, pixels", 224, ge=8, le=4096)
    runtime_version: str = spec("runtime version, release or commit", "")
    note: str = spec("caveats, e.g. proxy device, uncertain mapping of the model name", "")


@dataclass(frozen=True)
class TargetProfile:
    """A device and how edgepack builds for it. Units: ms, MB (10^6 bytes), GHz, GB/s, points."""

    description: str = spec("one line saying what the device and runtime are")
    formats: tuple[str, ...] = spec("model formats to produce", choices=FORMATS)
    runtime: str = spec("runtime on the device", choices=("onnxruntime", "litert"))
    threads: int = spec("inference threads on the device", ge=1, le=64)
    cpu: str = spec("CPU cores of the device, e.g. Cortex-A72")
    cores: int = spec("CPU cores on the device", ge=1, le=256)
    clock_ghz: float = spec("peak CPU clock, GHz", ge=0.1, le=6.0)
    isa: str = spec("instruction set, e.g. armv8.2-a")
    simd_features: tuple[str, ...] = spec("SIMD features that matter for INT8/FP16 "
                                          "(neon, dotprod, fp16, avx512_vnni...)")
    opset: int = spec("ONNX opset for export", 17, ge=13, le=21)
    input_shape: tuple[int, ...] = spec("default model input shape (NCHW)", [1, 3, 224, 224], ge=1, le=8192)
    calibration_samples: int = spec("default number of calibration samples", 200, ge=1, le=100000)
    calibration_method: str = spec("activation range calibration", "minmax", choices=CALIB_METHODS)
    tflite_io_dtype: str = spec("TFLite input/output tensor dtype", "int8", choices=("int8", "uint8", "float32"))
    memory_gb: float = spec("device RAM, GB", 1.0, ge=0.01, le=4096)
    memory_bandwidth_gbs: float = spec("sustained memory bandwidth, GB/s", 1.0, ge=0.01, le=2000)
    clusters: str = spec("core clusters and clocks, e.g. '4x Cortex-A72 @ 1.5 GHz'", "")
    reference: tuple[Reference, ...] = spec("published reference latencies ([[reference]] tables), used by the "
                                            "device latency estimator", ())
    max_accuracy_drop: float | None = spec("budget: top-1 accuracy drop FP32->INT8, points", None, ge=0, le=100)
    min_agreement: float | None = spec("budget: top-1 agreement INT8 vs FP32 (0-1), used without labels", None,
                                       ge=0, le=1)
    max_miou_drop: float | None = spec("budget: segmentation mIoU drop FP32->INT8, points (task segment)", None,
                                       ge=0, le=100)
    max_map_drop: float | None = spec("budget: detection mAP@0.5 drop FP32->INT8, points (task detect)", None,
                                      ge=0, le=100)
    max_latency_ms: float | None = spec("budget: INT8 p50 latency, ms", None, ge=0, le=1e6)
    latency_budget_kind: str = spec("which latency the budget applies to", "host", choices=LATENCY_KINDS)
    max_size_mb: float | None = spec("budget: INT8 model file size, MB", None, ge=0, le=1e6)
    min_output_sqnr_db: float | None = spec("budget: SQNR of each INT8 output vs FP32, dB; judges the outputs no "
                                            "accuracy/agreement budget does (every output when set; default 10)",
                                            None, ge=-100, le=200)
    emulate: bool = spec("run the device stage: the shipped and FP32 models under qemu-user emulating qemu_cpu, "
                         "with the device's own runtime wheels (prepare once: edgepack device prepare NAME)", False)
    qemu_cpu: str = spec("CPU model qemu-user emulates: the device's core (its ISA features select the runtime's "
                         "kernels; qemu's 'max' has dot-product/SVE/i8mm a Pi 4 lacks)", "", choices=QEMU_CPUS)
    rootfs_release: str = spec("Debian release of the emulated arm64 userland (its Python runs the bundle's "
                               "run.py)", "bookworm", choices=ROOTFS_RELEASES)
    device_wheels: tuple[str, ...] = spec("aarch64 wheels installed in the emulated device, pinned "
                                          "(name==version)", list(DEVICE_WHEELS))
    emulation_samples: int = spec("validation samples (seeded subset) run on the emulated device per precision",
                                  8, ge=1, le=100000)
    emulation_max_seconds: float = spec("time the device stage may take, s: fewer samples (at least 2) when the "
                                        "host's one-thread latency predicts more; when even those would take over "
                                        "3x this, the stage is skipped unless --emulate asks for it", 300,
                                        ge=10, le=86400)
    name: str = spec("profile name (the file stem; set by the loader)", "")
    path: str = spec("file the profile was loaded from (set by the loader)", "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def arch(self) -> str:
        """The device's architecture, from its ``isa``: "aarch64" (armv8*/armv9*) or "x86_64" (x86-64 levels)."""
        return "aarch64" if self.isa.lower().startswith(("armv", "aarch64", "arm64")) else "x86_64"


def targets_dir() -> Path:
    """targets/ beside the package (source checkout) or inside it (installed)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "targets", here / "targets"):
        if candidate.is_dir():
            return candidate
    return here.parent / "targets"


def available() -> list[str]:
    """Sorted names of the shipped profiles."""
    return sorted(p.stem for p in targets_dir().glob("*.toml"))


def parse_profile(text: str, *, name: str, where: str) -> TargetProfile:
    """Parse TOML text into a validated profile; every problem is reported at once."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})", hint="check quoting and brackets") from None
    for key in ("name", "path"):
        if key in data:
            raise ConfigError(f"{where}: '{key}' is set by edgepack, not in the file",
                              hint=f"remove the '{key}' line; the name is the file stem")
    profile = schema.parse(TargetProfile, data, where=where,
                           hint="see `edgepack targets show NAME` for every profile key, its value and meaning "
                                "(bounds: the README)")
    if not profile.formats or len(set(profile.formats)) != len(profile.formats):
        raise ConfigError(f"{where}: formats = {list(profile.formats)}: name each format once, at least one",
                          hint=f"e.g. formats = [\"onnx\"] (one or more of {', '.join(FORMATS)})")
    return dataclasses.replace(profile, name=name, path=where)


def load(name_or_path: str) -> TargetProfile:
    """Load a shipped profile by name, or any profile file by path."""
    path = Path(name_or_path)
    if path.is_dir() and (name_or_path.endswith(".toml") or "/" in name_or_path or name_or_path.startswith(".")):
        raise InputError(f"target profile {name_or_path} is a folder, not a .toml file",
                         hint="pass a shipped name (edgepack targets list) or the path of a .toml profile")
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise InputError(f"target profile file not found: {name_or_path}",
                             hint="pass a shipped name (edgepack targets list) or an existing .toml path")
        return parse_profile(_read(path), name=path.stem, where=str(path))
    names = available()
    if name_or_path not in names:
        suggestion = did_you_mean(name_or_path, names)
        raise InputError(f"unknown target '{name_or_path}'" + (f" ({suggestion})" if suggestion else ""),
                         hint="available targets: " + ", ".join(names))
    path = targets_dir() / f"{name_or_path}.toml"
    return parse_profile(_read(path), name=name_or_path, where=str(path))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read target profile {path}: {exc}") from None
