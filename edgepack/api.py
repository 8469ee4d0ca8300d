"""The Python entry point: `edgepack.build(config)` -> BuildResult. The CLI is a thin layer over it."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as config_mod
from . import data, pipeline, safety, sources, targets, tempdirs, usercode
from .config import BuildConfig
from .context import BuildContext
from .errors import InputError, OutputError
from .util import ProgressFn, no_progress

log = logging.getLogger(__name__)
MIN_CALIB_SAMPLES = 8


@dataclass
class BuildResult:
    """What a build produced: where, whether every budget passed, and the full manifest."""

    bundle: Path
    zip: Path
    passed: bool
    manifest: dict[str, Any]
    seconds: float


def build(config: BuildConfig | None = None, progress: ProgressFn = no_progress, **options: Any) -> BuildResult:
    """Build a bundle. Pass a BuildConfig, or the same settings as keywords (model=..., target=...)."""
    if config is None:
        config = config_mod.from_mapping(options, where="build()")
    elif options:
        config = dataclasses.replace(config, **options)
    t0 = time.perf_counter()
    target = targets.load(config.target)
    out = Path(config.out)
    _check_output(out, config.force, safety.build_inputs(config))
    tempdirs.sweep_stale()
    with tempdirs.scratch() as workdir, usercode.no_exit("the build"):
        ctx = _prepare(config, target, workdir, progress)
        manifest = pipeline.run(ctx)
    return BuildResult(bundle=out, zip=out.with_name(out.name + ".zip"), passed=manifest["passed"],
                       manifest=manifest, seconds=round(time.perf_counter() - t0, 1))


def prune(config: BuildConfig, out: str | Path, progress: ProgressFn = no_progress) -> dict:
    """Prune (and fine-tune) only, writing the pruned PyTorch model to ``out`` (.pt2 program, or a
    state dict + architecture fallback) for users who fine-tune it themselves. Returns the report."""
    from .errors import ConfigError
    from .pruned_io import save_pruned
    from .stages import prune as prune_stage

    if config.prune is None:
        raise ConfigError("no pruning asked for", hint="pass --prune RATIO or --prune-keep-macs FRACTION")
    out = Path(out)
    if out.exists() and not config.force:
        raise OutputError(f"output {out} already exists", hint="pass --force to replace it")
    _check_output(out, True, safety.build_inputs(config))
    tempdirs.sweep_stale()
    with tempdirs.scratch() as workdir, usercode.no_exit("pruning"):
        ctx = _prepare(config, targets.load(config.target), workdir, progress)
        report = prune_stage.run(ctx)
        import torch

        out.parent.mkdir(parents=True, exist_ok=True)
        text = ctx.model.text
        example = (tuple(torch.from_numpy(ctx.calib.x[n][:1]) for n in text.input_names) if text is not None
                   else torch.from_numpy(ctx.calib.x[:1]))
        report["saved"] = save_pruned(ctx.model.module, out, example_input=example)
    return report


def diagnose(config: BuildConfig, bundle: Path | None = None, progress: ProgressFn = no_progress) -> list[dict]:
    """Per-layer FP32-vs-INT8 error, worst first. With ``bundle``, its shipped INT8 ONNX is diagnosed
    against itself without activation rounding (edgepack.diagnose_bundle: the model source its manifest
    records is never loaded); otherwise the model is quantized with the default recipe first."""
    from .diagnose import layer_errors
    from .stages import export, quantize

    if bundle is not None:
        from . import diagnose_bundle

        return diagnose_bundle.run(Path(bundle), str(config.val), progress)
    tempdirs.sweep_stale()
    with tempdirs.scratch() as workdir, usercode.no_exit("the diagnosis"):
        ctx = _prepare(config, targets.load(config.target), workdir, progress)
        export.run(ctx)
        with quantize.quiet_root_logger():
            quantize.run(dataclasses.replace(ctx, target=dataclasses.replace(ctx.target, formats=("onnx",)),
                                             config=dataclasses.replace(config, max_search_time=0)))
        # text builds make a static and a dynamic candidate: the static one has the rounded activations
        int8 = next(p for p in (workdir / "model_int8_static.onnx", workdir / "model_int8.onnx") if p.exists())
        progress("measuring per-layer error", 0, 1)
        rows = layer_errors(ctx.get("onnx", "fp32").path, int8, ctx.val.x)
        if not rows:
            raise InputError(f"{int8.name} rounds no activations (dynamic INT8?): there is no per-layer error "
                             "to measure", hint="diagnose the model source instead of the bundle")
        return rows


def _check_output(out: Path, force: bool, inputs=()) -> None:
    """Refuse early (before minutes of work) when the output exists, overlaps an input or cannot be written."""
    safety.check_output(out, inputs)
    for path in (out, out.with_name(out.name + ".zip")):
        if path.exists() and not force:
            raise OutputError(f"output {path} already exists", hint="pass --force to replace it, or another --out")
        safety.check_replaceable(path)
    parent = out.parent if str(out.parent) else Path(".")
    probe_dir = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    try:  # a real write probe: os.access says yes to root even where writes fail (read-only fs, /proc)
        Path(tempfile.mkdtemp(prefix=".edgepack-probe-", dir=probe_dir)).rmdir()
    except OSError as exc:
        raise OutputError(f"cannot write to {probe_dir}: {exc.strerror}",
                          hint="choose an --out in a writable folder") from None


def _prepare(config: BuildConfig, target: targets.TargetProfile, workdir: Path, progress: ProgressFn) -> BuildContext:
    """Load the model and data and check they fit each other, before any slow stage runs."""
    model = sources.load(config.model, weights=config.weights, num_classes=config.num_classes,
                         trust_model=config.trust_model, tokenizer=config.tokenizer, max_length=config.max_length)
    if model.text is not None:
        _check_text_build(config, target)
        shape: tuple[int, ...] = (1, model.text.max_length)
    else:
        shape = _input_shape(config, target, model)
    _check_single_input(model)
    num_outputs = _num_outputs(model, shape)
    calib, val = _load_data(config, target, model, shape, progress)
    labels = _labels(config, val, num_outputs, model)
    ctx = BuildContext(config=config, target=target, workdir=workdir, input_shape=shape, model=model, calib=calib,
                       val=val, val_is_calibration=not config.val, labels=labels, num_outputs=num_outputs,
                       progress=progress)
    if not config.val:
        ctx.warn("no --val data: agreement is measured on the calibration samples, which flatters INT8")
    return ctx


def _load_data(config: BuildConfig, target: targets.TargetProfile, model: sources.LoadedModel,
               shape: tuple[int, ...], progress: ProgressFn) -> tuple[data.Dataset, data.Dataset]:
    """(calibration, validation) sets; validation is the calibration set when no --val is given."""
    count = config.calib_samples or target.calibration_samples
    if model.text is not None:
        calib = data.load_text(config.calib, text=model.text, count=count, seed=config.seed, role="calibration")
    else:
        calib = data.load(config.calib or data.default_calibration(), input_shape=shape, preprocess=config.preprocess,
                          count=count, seed=config.seed, role="calibration", progress=progress)
    if len(calib) < min(MIN_CALIB_SAMPLES, config.calib_samples or MIN_CALIB_SAMPLES):
        raise InputError(f"only {len(calib)} calibration samples; at least {MIN_CALIB_SAMPLES} are needed",
                         hint="add images (or texts) to the calibration data or samples to the .npz")
    if not config.val:
        return calib, calib
    if model.text is not None:
        return calib, data.load_text(config.val, text=model.text, count=config.val_samples, seed=config.seed + 1,
                                     role="validation")
    return calib, data.load(config.val, input_shape=shape, preprocess=config.preprocess, count=config.val_samples,
                            seed=config.seed + 1, role="validation", progress=progress)


def _check_text_build(config: BuildConfig, target: targets.TargetProfile) -> None:
    """What text builds do not support yet, all reported at once, before any slow stage."""
    problems, hints = [], []
    if config.prune is not None:
        _check_text_prune(config.prune, problems, hints)
    if config.input_shape:
        problems.append("--input-shape does not apply to text models")
        hints.append("set the sequence length with --max-length")
    if not config.calib:
        problems.append("text models need calibration texts")
        hints.append("pass --calib texts.txt (one text per line) or a .jsonl / .csv with a text column")
    if problems:
        raise InputError("; ".join(problems), hint="; ".join(hints))


def _check_text_prune(options, problems: list[str], hints: list[str]) -> None:
    """Text models prune attention heads and FFN neurons of every layer alike (ratio or MAC goal)."""
    if options.ignore:
        problems.append("--prune-ignore does not apply to text models (every encoder layer is pruned alike)")
        hints.append("drop --prune-ignore")


def _check_single_input(model: sources.LoadedModel) -> None:
    if model.kind != "onnx":
        return
    from .backends import onnx as onnx_backend

    inputs = onnx_backend.io_details(model.onnx_path)["inputs"]
    if len(inputs) != 1:
        raise InputError(f"{model.onnx_path.name} has {len(inputs)} inputs ({', '.join(i['name'] for i in inputs)}); "
                         "image models take one", hint="export the model with a single image input")
    from .model_checks import check_image_input

    check_image_input(model.onnx_path)


def _input_shape(config: BuildConfig, target: targets.TargetProfile, model: sources.LoadedModel) -> tuple[int, ...]:
    if config.input_shape:
        return tuple(config.input_shape)
    if model.kind == "onnx":
        from .backends import onnx as onnx_backend

        fixed = onnx_backend.input_shape(model.onnx_path)
        if fixed:
            return fixed
    return tuple(target.input_shape)


def _num_outputs(model: sources.LoadedModel, shape: tuple[int, ...]) -> int | None:
    """Classes the model predicts (last output dim), found by one run before the slow stages."""
    from .model_checks import check_output_rank, first_tensor

    if model.kind == "onnx":
        from .backends import onnx as onnx_backend

        out = onnx_backend.io_details(model.onnx_path)["outputs"][0]["shape"]
        check_output_rank(out, model.onnx_path.name)
        return out[-1] if out and isinstance(out[-1], int) else None
    import torch

    from .backends.onnx import check_accepts_input

    if model.text is not None:
        from .text import example_inputs

        y = check_accepts_input(model.module, example_inputs(model.text.input_names, shape[-1]))
    else:
        y = check_accepts_input(model.module, torch.zeros(*shape))
    y = first_tensor(y, f"the forward of {model.spec}")
    check_output_rank(tuple(y.shape), model.spec)
    return int(y.shape[-1]) if y.ndim == 2 else None


def _labels(config: BuildConfig, val: data.Dataset, num_outputs: int | None,
            model: sources.LoadedModel) -> list[str] | None:
    """Class names from --labels, the validation folder or a text model's config; they must fit the model's
    output size.

    Folder labels are the sorted sub-folder indices (ImageFolder). With --labels, sub-folders are
    matched to the model's classes by name instead, so a folder may hold a subset of the classes.
    """
    names = _read_labels(config.labels) if config.labels else None
    if names is None and model.text is not None:
        names = model.text.labels
    if names is not None and num_outputs is not None and len(names) != num_outputs:
        raise InputError(f"{config.labels} has {len(names)} class names but the model has {num_outputs} outputs",
                         hint="one class name per line, in output order")
    if names is not None and val.class_names is not None:
        _remap_by_name(val, names)
    elif val.class_names is not None and num_outputs is not None and len(val.class_names) != num_outputs:
        raise InputError(f"the validation folder has {len(val.class_names)} class folders but the model has "
                         f"{num_outputs} outputs", hint="pass --labels FILE to match folders to classes by name")
    if num_outputs is not None and val.y is not None and int(val.y.max()) >= num_outputs:
        raise InputError(f"validation labels go up to {int(val.y.max())} but the model has {num_outputs} outputs",
                         hint="check --num-classes, the class folders, or the y array")
    return names if names is not None else val.class_names


def _read_labels(path: str) -> list[str]:
    try:
        return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels file {path}: {exc}") from None


def _remap_by_name(val: data.Dataset, names: list[str]) -> None:
    index = {n: i for i, n in enumerate(names)}
    unknown = [c for c in val.class_names or [] if c not in index]
    if unknown:
        raise InputError(f"validation class folders not in the labels file: {', '.join(unknown[:5])}",
                         hint="folder names must match lines of the --labels file")
    import numpy as np

    mapping = np.asarray([index[c] for c in val.class_names or []], dtype=np.int64)
    if val.y is not None:
        val.y = mapping[val.y]
