"""Bundle stage: model(s), manifest.json, report.md, run.py, labels and a golden sample, as a
folder plus a deterministic .zip, both written beside their final names and renamed into place
(edgepack.bundle.write). The input kind adds what its runner reads (e.g. a text model's tokenizer.json)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgepack import backends
from edgepack.backends.base import layouts_from_source
from edgepack.bundle import report
from edgepack.bundle.write import publish
from edgepack.stages.context import BuildContext
from edgepack.util import manifest_json, sha256_file

GOLDEN_TOLERANCE = 1e-3  # max abs diff of logits, same runtime and model on another run/machine
#: on the device's own kernels (another ISA: ONNX Runtime fuses INT8 differently, rounding differs by a step
#: here and there), the golden check allows this multiple of the largest difference the emulated device showed
DEVICE_TOLERANCE_MARGIN = 2.0
#: ... or, when no device run measured it, this fraction of the golden output's range
DEVICE_TOLERANCE_RANGE = 0.02


def run(ctx: BuildContext) -> dict:
    out = Path(ctx.config.out)
    staging = ctx.workdir / "bundle"
    staging.mkdir()
    io = _copy_models(ctx, staging)
    golden = _write_golden(ctx, staging)
    if ctx.labels:
        (staging / "labels.txt").write_text("\n".join(ctx.labels) + "\n", encoding="utf-8")
    _copy_runner(ctx, staging)
    _write_pictures(ctx, staging)
    files = {p.name: {"sha256": sha256_file(p), "size_bytes": p.stat().st_size} for p in sorted(staging.iterdir())}
    man = manifest(ctx, files, io, golden)
    _write_reports(ctx, staging, man)
    (staging / "manifest.json").write_text(manifest_json(man), encoding="utf-8")
    publish(staging, out, force=ctx.config.force)
    return man


def _write_reports(ctx: BuildContext, staging: Path, man: dict) -> None:
    """README.md, report.md and report.html show the manifest, so they are written from it, then listed in it."""
    from edgepack.bundle import html as html_report
    from edgepack.bundle import readme as bundle_readme

    (staging / "README.md").write_text(bundle_readme.render(man), encoding="utf-8")
    (staging / "report.md").write_text(report.render_markdown(man), encoding="utf-8")
    layers = ctx.records.get("diagnosis", {}).get("layers")
    pictures = staging / html_report.PICTURES_FILE
    (staging / "report.html").write_text(
        html_report.render(man, layers, pictures.read_bytes() if pictures.is_file() else None), encoding="utf-8")
    for name in ("README.md", "report.md", "report.html"):
        man["files"][name] = {"sha256": sha256_file(staging / name), "size_bytes": (staging / name).stat().st_size}
    man["files"] = dict(sorted(man["files"].items()))


def _write_pictures(ctx: BuildContext, staging: Path) -> None:
    """samples.png: FP32 vs INT8 masks or boxes on a few validation images (tasks that draw them)."""
    from edgepack.bundle import html as html_report

    pictures = ctx.outputs.get("task_pictures")
    if pictures is not None:
        (staging / html_report.PICTURES_FILE).write_bytes(html_report.task_pictures(pictures))


def _copy_models(ctx: BuildContext, staging: Path) -> dict:
    """Copy each shipped model into the bundle; {format: its inputs and outputs, as the manifest lists them}."""
    io = {}
    for fmt in ctx.target.formats:
        src = ctx.get(fmt, "int8").path
        dst = staging / report.MODEL_FILES[fmt]
        shutil.copyfile(src, dst)
        source = backends.get("onnx").io_details(ctx.get("onnx", "fp32").path)["outputs"]
        io[fmt] = layouts_from_source(backends.get(fmt).io_details(dst), [o["shape"] for o in source])
        if len({o["name"] for o in io[fmt]["outputs"]}) < len(io[fmt]["outputs"]):
            io[fmt]["outputs"] = shared_tensors(io[fmt]["outputs"], [o["name"] for o in source])
    return io


def shared_tensors(outputs: list[dict], declared: list[str]) -> list[dict]:
    """``outputs`` (io_details, in the model's order) with each output that shares its tensor with another named
    as the model ``declared`` it, plus the file's ``tensor`` name and the outputs it ``shares_tensor_with``. A model
    returning the same tensor twice gives a .tflite one tensor for both (onnx2tf drops the copy), and both were
    listed under its one name. Unchanged when the counts differ (no names to give)."""
    if len(declared) != len(outputs):
        return outputs
    names = [o["name"] for o in outputs]
    described = []
    for k, o in enumerate(outputs):
        same = [declared[j] for j, n in enumerate(names) if n == o["name"] and j != k]
        described.append({**o, "name": declared[k], "tensor": o["name"], "shares_tensor_with": same} if same else o)
    return described


def _copy_runner(ctx: BuildContext, staging: Path) -> None:
    """run.py for the device, plus whatever the input kind's runner code reads (e.g. tokenizer.json) and the
    task's (e.g. the detection decoder)."""
    shutil.copyfile(report.runner_template(), staging / "run.py")
    ctx.inputs.bundle_files(staging)
    for src in getattr(ctx.task, "runner_files", ()):  # e.g. postprocess.py: decoding shared with validation
        shutil.copyfile(src, staging / Path(src).name)


def _write_golden(ctx: BuildContext, staging: Path) -> dict:
    """One real input (named as the input kind says) and every output of every shipped model on it, for
    `edgepack verify` and run.py --golden (edgepack.bundle.golden_check names the outputs)."""
    from edgepack.bundle.golden_check import outputs_for
    from edgepack.inputs.data import rows

    x = rows(ctx.val.x, 0, 1)
    outs = {}
    for fmt in ctx.target.formats:
        outs.update(outputs_for(fmt, backends.get(fmt).Runner(ctx.get(fmt, "int8").path, threads=1).run_outputs(x)))
    inputs = ctx.inputs.golden_inputs(x)
    with open(staging / "golden.npz", "wb") as fh:
        np.savez(fh, **inputs, **outs)
    from edgepack.backends.onnx import host_arch

    return {"file": "golden.npz", "tolerance": GOLDEN_TOLERANCE, "host_arch": host_arch(),
            "device_tolerance": {fmt: _device_tolerance(ctx, fmt, outs[fmt]) for fmt in ctx.target.formats}}


def _device_tolerance(ctx: BuildContext, fmt: str, golden_out: np.ndarray) -> dict:
    """The golden check's tolerance where run.py runs on another ISA than the build host (the device itself):
    from the emulated device's largest INT8 difference when the device stage ran, else from the output range."""
    device = (ctx.records.get("validation", {}).get(fmt) or {}).get("device")
    if device:
        measured = float(device["agreement_with_host"]["int8"]["max_abs_diff"])
        return {"value": float(f"{max(GOLDEN_TOLERANCE, DEVICE_TOLERANCE_MARGIN * measured):.4g}"),
                "basis": f"{DEVICE_TOLERANCE_MARGIN:g}x the largest INT8 difference device vs host over "
                         f"{device['samples']} samples on the emulated {device['qemu_cpu']}"}
    span = float(np.max(golden_out) - np.min(golden_out)) if golden_out.size else 0.0
    return {"value": float(f"{max(GOLDEN_TOLERANCE, DEVICE_TOLERANCE_RANGE * span):.4g}"),
            "basis": f"{DEVICE_TOLERANCE_RANGE:.0%} of the golden output's range (no device run measured it)"}


def manifest(ctx: BuildContext, files: dict[str, dict], io: dict[str, dict], golden: dict) -> dict:
    """The bundle's manifest (schema edgepack.bundle/1). ``files`` maps name -> {sha256, size_bytes}."""
    models = [_model_entry(ctx, fmt, files, io) for fmt in ctx.target.formats]
    primary = models[0]
    return {
        "schema": report.SCHEMA,
        "name": ctx.config.name or ctx.model.name,
        "target": {"name": ctx.target.name, "description": ctx.target.description, "cpu": ctx.target.cpu,
                   "formats": list(ctx.target.formats)},
        "runtime": {"name": ctx.target.runtime, "threads": ctx.target.threads},
        "model": {k: primary[k] for k in ("file", "format", "sha256", "size_bytes")},
        "models": models,
        "inputs": primary["inputs"],
        "outputs": primary["outputs"],
        "preprocess": _preprocess(ctx),
        "labels": ctx.labels,
        "validation": primary["validation"],
        "passed": all(m["validation"]["passed"] for m in models),
        "warnings": ctx.warnings,
        "golden": golden,
        "files": dict(sorted(files.items())),
        "tools": report.tool_versions(),
        "created_from": _created_from(ctx),
        "config": ctx.config.to_dict(),
        "stages": {k: v for k, v in sorted(ctx.records.items()) if k != "validation"},
    }


def _preprocess(ctx: BuildContext) -> dict:
    """What the device runner must do to an input: the input kind's record (see edgepack.inputs.kinds)."""
    return ctx.inputs.preprocess_record()


def _model_entry(ctx: BuildContext, fmt: str, files: dict, io: dict) -> dict:
    name = report.MODEL_FILES[fmt]
    return {"file": name, "format": fmt, "precision": "int8", "sha256": files[name]["sha256"],
            "size_bytes": files[name]["size_bytes"], **io[fmt], "validation": ctx.records["validation"][fmt]}


def _created_from(ctx: BuildContext) -> dict:
    src = ctx.model
    return {"model": src.spec, "model_sha256": src.sha256, "weights": ctx.config.weights,
            "weights_sha256": src.weights_sha256,
            "calibration": {"source": ctx.calib.source, "samples": len(ctx.calib), "sha256": ctx.calib.digest,
                            "skipped": len(ctx.calib.skipped)},
            "validation": {"source": ctx.val.source, "samples": len(ctx.val), "sha256": ctx.val.digest,
                           "skipped": len(ctx.val.skipped), "is_calibration_data": ctx.val_is_calibration},
            "input_shape": list(ctx.input_shape), "seed": ctx.config.seed}
