"""The Python entry point: `edgepack.build(config)` -> BuildResult. The CLI is a thin layer over it."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack import backends, pipeline, targets, tasks
from edgepack import config as config_mod
from edgepack.config import BuildConfig
from edgepack.errors import InputError, OutputError
from edgepack.guards import safety, tempdirs, usercode
from edgepack.inputs import data, kinds, sources
from edgepack.inputs.labels import read_class_names
from edgepack.stages import device as device_stage
from edgepack.stages.context import BuildContext
from edgepack.util import ProgressFn, no_progress, quiet_root_logger, sha256_file

log = logging.getLogger(__name__)
MIN_CALIB_SAMPLES = 8
#: fewer calibration samples than this, when more were asked for, is said in a warning
FEW_CALIB_SAMPLES = 64


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
    device_stage.check(config, target)  # an explicit --emulate needs a prepared device: say so before any work
    out = Path(config.out)
    _check_output(out, config.force, safety.build_inputs(config, default_calib=_default_calibration(config)))
    tempdirs.sweep_stale()
    with tempdirs.scratch() as workdir, usercode.no_exit("the build"):
        ctx = _prepare(config, target, workdir, progress)
        manifest = pipeline.run(ctx)
    return BuildResult(bundle=out, zip=out.with_name(out.name + ".zip"), passed=manifest["passed"],
                       manifest=manifest, seconds=round(time.perf_counter() - t0, 1))


def prune(config: BuildConfig, out: str | Path, progress: ProgressFn = no_progress) -> dict:
    """Prune (and fine-tune) only, writing the pruned PyTorch model to ``out`` (.pt2 program, or a
    state dict + architecture fallback) for users who fine-tune it themselves. Returns the report."""
    from edgepack.errors import ConfigError
    from edgepack.pruning.io import save_pruned
    from edgepack.stages import prune as prune_stage

    if config.prune is None:
        raise ConfigError("no pruning asked for", hint="pass --prune RATIO or --prune-keep-macs FRACTION")
    out = Path(out)
    if out.exists() and not config.force:
        raise OutputError(f"output {out} already exists", hint="pass --force to replace it")
    _check_output(out, True, safety.build_inputs(config, default_calib=_default_calibration(config)))
    tempdirs.sweep_stale()
    with tempdirs.scratch() as workdir, usercode.no_exit("pruning"):
        ctx = _prepare(config, targets.load(config.target), workdir, progress)
        report = prune_stage.run(ctx)

        out.parent.mkdir(parents=True, exist_ok=True)
        from edgepack.inputs.data import rows

        args = ctx.inputs.torch_args(rows(ctx.calib.x, 0, 1))
        report["saved"] = save_pruned(ctx.model.module, out, example_input=args if len(args) > 1 else args[0])
        if ctx.model.preprocess:  # the saved file does not carry the source's preprocessing: say how to build it
            report["build_options"] = preprocess_options(ctx.config.preprocess, ctx.input_shape)
    return report


def preprocess_options(pre, shape: tuple[int, ...]) -> str:
    """The build options that reproduce ``pre`` (a Preprocess) and ``shape`` on the command line."""
    def join(values) -> str:
        return ",".join(f"{v:g}" for v in values)

    parts = [f"--input-shape {','.join(str(int(d)) for d in shape)}"]
    parts += [f"--resize {pre.resize}"] if pre.resize else []
    parts += [f"--crop {pre.crop}"] if pre.crop else []
    parts += [f"--mean {join(pre.mean)}", f"--std {join(pre.std)}", f"--scale {pre.scale:.10g}",
              f"--channel-order {pre.channel_order}"]
    return " ".join(parts)


def diagnose(config: BuildConfig, bundle: Path | None = None, progress: ProgressFn = no_progress,
             output_costs: int = 0) -> list[dict]:
    """Per-layer FP32-vs-INT8 error, worst first. With ``bundle``, its shipped INT8 ONNX is diagnosed
    against itself without activation rounding (edgepack.bundle.diagnose: the model source its manifest
    records is never loaded); otherwise the model is quantized with the default recipe first.
    ``output_costs``: the first that many rows also get ``output_sqnr_db``, the outputs' SQNR when only that
    row's activation is rounded (edgepack.quantize.diagnose.output_costs; one model run per row)."""
    from edgepack.quantize.diagnose import measure
    from edgepack.stages import export, quantize

    if bundle is not None:
        from edgepack.bundle import diagnose as diagnose_bundle

        return diagnose_bundle.run(Path(bundle), str(config.val), progress, output_costs)
    tempdirs.sweep_stale()
    with tempdirs.scratch() as workdir, usercode.no_exit("the diagnosis"):
        ctx = _prepare(config, targets.load(config.target), workdir, progress)
        export.run(ctx)
        with quiet_root_logger():
            quantize.run(dataclasses.replace(ctx, target=dataclasses.replace(ctx.target, formats=("onnx",)),
                                             config=dataclasses.replace(config, max_search_time=0)))
        # a recipe with candidates marks the one with rounded activations; otherwise the shipped one
        int8 = (ctx.artifacts.get("onnx:int8-calibrated") or ctx.get("onnx", "int8")).path
        rows = measure(ctx.get("onnx", "fp32").path, int8, ctx.val.x, output_costs, progress)
        if not rows:
            raise InputError(f"{int8.name} rounds no activations (dynamic INT8?): there is no per-layer error "
                             "to measure", hint="diagnose the model source instead of the bundle")
        return rows


def sign(bundle: str | Path, key: str | Path) -> Path:
    """Verify ``bundle`` (digests, golden output), then sign its manifest with the OpenSSH private ``key``
    (edgepack.bundle.signing): manifest.json.sig, and the bundle's .zip rewritten with it. Returns the path."""
    from edgepack.bundle import read, signing

    return signing.sign(Path(bundle), Path(key), verify=read.verify)


def _default_calibration(config) -> str | None:
    """The shipped calibration folder an image build reads when --calib is not given."""
    if config.tokenizer:
        return None
    try:
        return data.default_calibration()
    except InputError:
        return None


def _check_output(out: Path, force: bool, inputs=()) -> None:
    """Refuse early (before minutes of work) when the output exists, overlaps an input or cannot be written."""
    safety.check_output(out, inputs)
    for path in (out, out.with_name(out.name + ".zip")):
        if path.exists() and not force:
            raise OutputError(f"output {path} already exists", hint="pass --force to replace it, or another --out")
        safety.check_replaceable(path, zip_of=out.name if path != out else None)
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
    config, said = _model_preprocessing(config, model)
    for fmt in target.formats:  # a missing optional install is a usage error now, not after minutes of work
        backends.get(fmt)
    fixed, onnx_inputs = model.input_shape, None
    if model.kind == "onnx":
        from edgepack.backends import onnx as onnx_backend
        from edgepack.backends import onnx_layout

        fixed = onnx_backend.input_shape(model.onnx_path)
        onnx_inputs = onnx_backend.io_details(model.onnx_path)["inputs"]
        if kinds.reads_photos(config) and onnx_layout.as_built(onnx_inputs) != onnx_inputs:  # NHWC, fed NCHW
            onnx_inputs = onnx_layout.as_built(onnx_inputs)
            fixed = tuple(onnx_layout.nchw(fixed)) if fixed else None
    kind = kinds.for_model(model, config, target, onnx_inputs)
    kind.check(onnx_inputs)
    shape = kind.input_shape(fixed)
    if _torchvision_detector(model, shape):
        config, kind = _as_detector(config, model, target, onnx_inputs, said)
    mismatch = kind.channel_mismatch(shape)
    if mismatch and kinds.reads_photos(config):  # .npz samples are already preprocessed: only run.py's photos suffer
        raise InputError(mismatch[0], hint=mismatch[1])
    output_shapes = _output_shapes(model, kind, shape)
    task = _task(config, output_shapes, model, said)
    num_outputs = (tasks.score_count(output_shapes[0]) or output_shapes[0][-1]  # (N, C, 1, 1): C
                   if task.name == "classify" and output_shapes else None)
    classes = num_outputs if num_outputs is not None else (   # what class names must number
        task.class_count(output_shapes) if hasattr(task, "class_count") else None)
    calib, val = _load_data(config, target, kind, shape, progress)
    if config.labels_dir:
        _read_targets(config, task, val, shape, output_shapes)
    labels = _labels(config, val, num_outputs, model, classes)
    said.extend(_label_notes(config, task, val, labels, output_shapes, text=model.text is not None))
    same = _same_data(config.calib, config.val)
    ctx = BuildContext(config=config, target=target, workdir=workdir, input_shape=shape, model=model, calib=calib,
                       val=val, inputs=kind, task=task, val_is_calibration=not config.val or same, labels=labels,
                       num_outputs=num_outputs, progress=progress)
    for line in said:
        ctx.warn(line)
    if mismatch:
        ctx.warn(f"{mismatch[0]}: the bundle's run.py reads photos with this channel order and will fail on them "
                 f"(the .npz data was used as given); {mismatch[1]}")
    _data_warnings(ctx)
    _unused_labels(ctx)
    if not config.val:
        ctx.warn("no --val data: agreement is measured on the calibration samples, which flatters INT8")
    elif same:
        ctx.warn(f"--val {config.val} is the calibration data: INT8 is judged on the samples it was calibrated on, "
                 "which flatters it; validate on held-out data")
    return ctx


def _data_warnings(ctx: BuildContext) -> None:
    """What the build should know about its data: a calibration set smaller than asked for, files skipped."""
    config, calib = ctx.config, ctx.calib
    asked = config.calib_samples or ctx.target.calibration_samples
    if asked and len(calib) < min(asked, FEW_CALIB_SAMPLES):
        ctx.warn(f"calibration on {len(calib)} samples ({'--calib-samples' if config.calib_samples else 'the profile'}"
                 f" asks for {asked}; {calib.source} holds no more): INT8 ranges from so few may not hold on other "
                 "inputs; add samples like the ones the model will see")
    for role, ds in (("calibration", calib), ("validation", ctx.val if config.val else None)):
        if ds is not None and ds.skipped:
            ctx.warn(f"{role} data {ds.source}: skipped {len(ds.skipped)} unreadable file(s), e.g. "
                     f"{ds.skipped[0]}")
        if ds is not None and ds.truncated:  # the model reads their first tokens only, here and on the device
            length = ctx.input_shape[-1]
            ctx.warn(f"{role} data {ds.source}: {ds.truncated} of {len(ds)} texts are longer than {length} tokens "
                     f"and were cut to their first {length} (the bundle's run.py cuts them alike); --max-length "
                     "sets the length")
    names = (ctx.val.class_names if ctx.val is not None and config.val else None) or []
    if not config.labels and all(n.isdigit() for n in names) and names != sorted(names, key=int):
        ctx.warn(f"validation class folders are numbers, and class i is the i-th in text order ({', '.join(names[:4])}"
                 f", ...), as torchvision's ImageFolder and Keras number them; if folder k holds class k, pass "
                 f"--labels with the lines {', '.join(sorted(names, key=int)[:4])}, ... to match them by name")
    if ctx.val is not None and ctx.val.empty_classes and config.val:
        numbered = "" if config.labels else " (they keep their class numbers: folders are classes in sorted order)"
        ctx.warn(f"validation folder {ctx.val.source}: class folder(s) {', '.join(ctx.val.empty_classes)} hold no "
                 f"images, so those classes are not validated{numbered}")


def _unused_labels(ctx: BuildContext) -> None:
    """A warning when labels were given to a build whose task judges no labels (generic: SQNR only): a model whose
    scores came as (N, 1, C) was validated without its class folders' labels and without a word."""
    labelled = ctx.config.val and ctx.val is not None and ctx.val.y is not None
    if ctx.task.name != "generic" or not (labelled or ctx.config.labels):
        return
    given = " and ".join(filter(None, [f"the {len(ctx.val.y)} validation labels" if labelled else "",
                                       "--labels" if ctx.config.labels else ""]))
    ctx.warn(f"{given} are not used: the task is generic (every output judged by its SQNR against FP32); "
             "--task classify judges a first output of (N, C) or (N, C, 1, 1) class scores by its accuracy")


def _torchvision_detector(model: sources.LoadedModel, shape: tuple[int, ...]) -> str | None:
    """A torchvision single-stage detector (SSD, SSDLite, RetinaNet, FCOS) becomes its decoded candidates at
    ``shape``, with its transform's normalisation as the model's preprocessing (edgepack.inputs.tv_detection);
    a two-stage one is refused. Returns the family adapted, else None."""
    if model.kind != "torch" or model.text is not None or len(shape) != 4:
        return None
    from edgepack.inputs import tv_detection

    found = tv_detection.family(model.module)
    if found == "two-stage":
        tv_detection.refuse_two_stage(model.spec, model.module)
    if not found:
        return None
    model.preprocess = tv_detection.preprocess(model.module, shape)
    model.preprocess_from = f"its {type(model.module).__name__}'s transform"
    model.module = tv_detection.adapt(model.module, shape)
    log.info("%s is a torchvision %s: built as its decoded boxes and scores at %s", model.spec, found, shape[2:])
    return found


def _task(config: BuildConfig, output_shapes: list[tuple], model: sources.LoadedModel, said: list[str]):
    """The build's task (asked for, or inferred from the output shapes), checked against those shapes."""
    task = tasks.get(config.task, config) if config.task else tasks.for_outputs(output_shapes)
    if not config.task and task.name == "generic":
        said.extend(_task_hints(output_shapes))
    if config.box_format != "auto" and not hasattr(task, "box_format"):
        from edgepack.errors import ConfigError

        raise ConfigError(f"--box-format is for the detect task; this build's task is {task.name}",
                          hint="pass --task detect, or drop --box-format")
    if hasattr(task, "settle_format"):   # YOLOv5's (N, K, 5 + C): --labels tells C
        names = len(read_class_names(config.labels)) if config.labels else None
        said.extend(filter(None, [task.settle_format(output_shapes, names)]))
    if hasattr(task, "check_outputs"):
        task.check_outputs(output_shapes, model.spec)
    if model.text is not None and model.text.multi_label and task.name == "classify":
        task.multi_label = True
        said.append(f"{model.name} is a multi-label classifier (problem_type multi_label_classification): run.py "
                    "scores each class with a sigmoid and lists every class at 0.5 or more, but validation judges "
                    "the top-scoring class only (top-1 agreement, accuracy against one label per text)")
    return task


def _task_hints(shapes: list[tuple]) -> list[str]:
    """What a model inferred as generic may be, said once: a first output of (N, classes) scores beside others
    (a classifier returning its embedding too: judged by SQNR only, its top-1 never), or a 4-D map of several
    channels (a segmenter's per-pixel scores: judged by SQNR, not mIoU)."""
    if len(shapes) > 1 and tasks.class_scores(shapes[0]):
        return [f"the first of the model's {len(shapes)} outputs, {list(shapes[0])}, looks like class scores: every "
                "output is judged by its SQNR (task generic); pass --task classify to judge its top-1 (agreement, "
                "accuracy with labels)"]
    maps = [k for k, s in enumerate(shapes) if len(s) == 4 and isinstance(s[1], int) and s[1] > 1
            and all(isinstance(d, int) and d > 1 for d in s[2:])]
    if maps:
        return [f"output {maps[0]} {list(shapes[maps[0]])} is a map of {shapes[maps[0]][1]} channels: it is judged by "
                "its SQNR (task generic); if it is a per-pixel class map, --task segment judges mIoU and pixel "
                "accuracy (with --labels-dir masks, or against FP32's own classes)"]
    return []


def _as_detector(config: BuildConfig, model: sources.LoadedModel, target, onnx_inputs, said: list[str]):
    """(config, input kind) for an adapted torchvision detector: its preprocessing, the detect task unless
    another was asked for, and an input kind that reads photos with that preprocessing."""
    config, more = _model_preprocessing(config, model)
    said.extend(more)
    if not config.task:
        config = dataclasses.replace(config, task="detect")
    return config, kinds.for_model(model, config, target, onnx_inputs)


def _model_preprocessing(config: BuildConfig, model: sources.LoadedModel) -> tuple[BuildConfig, list[str]]:
    """The image preprocessing a model declares (an HF folder's preprocessor_config.json) for every field the
    user left at its default; a field the user set to another value is kept, with a warning naming both."""
    if not model.preprocess:
        return config, []
    from edgepack.config import Preprocess
    from edgepack.inputs.hf_image import NOTE

    default, have = Preprocess(), config.preprocess
    said = [model.preprocess[NOTE]] if NOTE in model.preprocess else []
    take = {}
    for key, value in model.preprocess.items():
        if key == NOTE:
            continue
        mine = getattr(have, key)
        if mine == getattr(default, key):
            take[key] = value
        elif mine != value:
            said.append(f"{key} {mine} was given, but {model.spec} declares {value} ({model.preprocess_from}); "
                        f"the given value is used")
    if not take:
        return config, said
    log.info("preprocessing from %s: %s", model.spec, take)
    return dataclasses.replace(config, preprocess=dataclasses.replace(have, **take)), said


def _same_data(calib: str | None, val: str | None) -> bool:
    """True when the validation data is the calibration data: the same path, or two files with equal bytes."""
    if not calib or not val:
        return False
    a, b = Path(calib), Path(val)
    try:
        if a.resolve() == b.resolve():
            return True
        return a.is_file() and b.is_file() and a.stat().st_size == b.stat().st_size and \
            sha256_file(a) == sha256_file(b)
    except OSError:
        return False


def _load_data(config: BuildConfig, target: targets.TargetProfile, kind: kinds.ImageInput,
               shape: tuple[int, ...], progress: ProgressFn) -> tuple[data.Dataset, data.Dataset]:
    """(calibration, validation) sets; validation is the calibration set when no --val is given."""
    count = config.calib_samples or target.calibration_samples
    calib = kind.load(config.calib, role="calibration", count=count, seed=config.seed, shape=shape,
                      progress=progress)
    if len(calib) < min(MIN_CALIB_SAMPLES, config.calib_samples or MIN_CALIB_SAMPLES):
        raise InputError(f"only {len(calib)} calibration samples; at least {MIN_CALIB_SAMPLES} are needed",
                         hint="add images (or texts) to the calibration data or samples to the .npz")
    if not config.val:
        return calib, calib
    return calib, kind.load(config.val, role="validation", count=config.val_samples, seed=config.seed + 1,
                            shape=shape, progress=progress)


def _read_targets(config: BuildConfig, task: tasks.Task, val: data.Dataset, shape: tuple[int, ...],
                  output_shapes: list[tuple]) -> None:
    """Per-sample validation targets (masks, boxes) from --labels-dir, read by the task that judges them."""
    from edgepack.errors import ConfigError

    if not hasattr(task, "read_targets"):
        raise ConfigError(f"--labels-dir is for the detect and segment tasks; this build's task is {task.name}",
                          hint="pass --task detect or --task segment (classifiers take class sub-folders or y)")
    names = read_class_names(config.labels) if config.labels else None
    val.targets = task.read_targets(val, config.labels_dir, input_shape=shape, preprocess=config.preprocess,
                                    output_shapes=output_shapes, class_names=names)
    if names is None and task.name == "detect" and Path(config.labels_dir).suffix.lower() == ".json":
        from edgepack.inputs.labels import coco_category_names

        found = coco_category_names(Path(config.labels_dir))  # the bundle names its classes as the labels do
        if found and len(found) == task.class_count(output_shapes):
            val.class_names = found


def _output_shapes(model: sources.LoadedModel, kind: kinds.ImageInput, shape: tuple[int, ...]) -> list[tuple]:
    """The model's output shapes (ONNX: as declared; torch: from one run), before the slow stages."""
    from edgepack.inputs.model_checks import check_output_rank, first_tensor

    if model.kind == "onnx":
        from edgepack.backends import onnx as onnx_backend

        shapes = [tuple(o["shape"] or ()) for o in onnx_backend.io_details(model.onnx_path)["outputs"]]
        for s in shapes:
            check_output_rank(s, model.onnx_path.name)
        return shapes
    from edgepack.backends.onnx import check_accepts_input

    y = check_accepts_input(model.module, kind.example_args(shape), kind.shape_flag)
    outs = list(y) if isinstance(y, list | tuple) else [first_tensor(y, f"the forward of {model.spec}")]
    shapes = [tuple(o.shape) for o in outs if hasattr(o, "shape")]
    if not shapes and outs and all(isinstance(o, dict) for o in outs):  # post-processed detections, per image
        keys = ", ".join(sorted({str(k) for o in outs for k in o}))
        raise InputError(f"the forward of {model.spec} returns a list of {len(outs)} dict(s) ({keys}), one per "
                         "image, not tensors: post-processed results whose size varies with the photo, which no "
                         "INT8 format ships",
                         hint="return the network's raw outputs at a fixed size, e.g. boxes (N, K, 4) and scores "
                              "(N, K, C) before NMS (--task detect); torchvision's SSD, RetinaNet and FCOS models "
                              "are adapted by edgepack when the factory returns them as they are")
    for s in shapes:
        check_output_rank(s, model.spec)
    return shapes


def _labels(config: BuildConfig, val: data.Dataset, num_outputs: int | None,
            model: sources.LoadedModel, classes: int | None = None) -> list[str] | None:
    """Class names from --labels, the validation folder or a text model's config; they must fit the model's
    output size.

    Folder labels are the sorted sub-folder indices (ImageFolder). With --labels, sub-folders are
    matched to the model's classes by name instead, so a folder may hold a subset of the classes.
    """
    names = read_class_names(config.labels) if config.labels else None
    if names is None:
        names = model.text.labels if model.text is not None else model.labels
    if names is not None and classes is not None and len(names) != classes:
        # a classifier's outputs, a detector's or segmenter's classes: a segmenter's list without "background"
        # shifted every name by one in run.py and the report
        raise InputError(f"{config.labels or 'the model config id2label'} has {len(names)} class names but the "
                         f"model tells {classes} classes apart",
                         hint="one class name per line, in the model's output order (a segmenter's class 0, "
                              "often 'background', included)")
    if names is not None and val.class_names is not None:
        _remap_by_name(val, names)
    elif val.class_names is not None and num_outputs is not None and len(val.class_names) != num_outputs:
        raise InputError(f"the validation folder has {len(val.class_names)} class folders but the model has "
                         f"{num_outputs} outputs", hint="pass --labels FILE to match folders to classes by name")
    if num_outputs is not None and val.y is not None and int(val.y.max()) >= num_outputs:
        beyond = int((val.y >= num_outputs).sum())
        raise InputError(f"validation labels go up to {int(val.y.max())} but the model has {num_outputs} outputs "
                         f"(classes 0-{num_outputs - 1}): {beyond} of {len(val.y)} samples carry a label beyond",
                         hint="check the validation labels (a text file's label column: class indices from 0, or "
                              "class names)" if model.text is not None else
                              "check --num-classes and the validation labels (class folders, the .npz's y, or "
                              "a text file's label column)")
    return names if names is not None else val.class_names


def _label_notes(config: BuildConfig, task: tasks.Task, val: data.Dataset, labels: list[str] | None,
                 output_shapes: list[tuple], *, text: bool) -> list[str]:
    """What to say about labels (those a generic model cannot use: `_unused_labels`): a text model's (N, C) output
    taken for C class scores with nothing naming them: a sentence-embedding encoder's (1, 384) was built as a
    384-class classifier, judged by the top-1 of its largest element, and run.py printed a 'label' and softmax
    'scores' over its dimensions."""
    if not text or config.task or task.name != "classify" or labels is not None:
        return []
    width, used = output_shapes[0][-1], 0 if val.y is None else len(set(val.y.tolist()))
    if width <= 2 * max(used, 1):   # the labels span the outputs: a classifier
        return []
    seen = f"the validation labels use {used} of them" if used else "no class names or labels say what they are"
    return [f"the model's output {list(output_shapes[0])} is read as {width} class scores (task classify; {seen}): "
            "top-1 agreement and run.py's 'label' take its largest element; if it is an embedding, pass --task "
            "generic (every output judged by its SQNR against FP32), else --labels with the class names"]


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
