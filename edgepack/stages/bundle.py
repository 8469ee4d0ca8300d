"""Bundle stage: model(s), manifest.json, report.md, run.py, labels and a golden sample, as a
folder plus a deterministic .zip, both written beside their final names and renamed into place.

Text bundles also carry tokenizer.json, and their run.py is templates/run_text.py (tokenizes with the
`tokenizers` library alone); their golden.npz holds every token input under its own name."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from .. import backends, report
from ..context import BuildContext
from ..errors import OutputError
from ..util import manifest_json, sha256_file

ZIP_TIME = (1980, 1, 1, 0, 0, 0)
GOLDEN_TOLERANCE = 1e-3  # max abs diff of logits, same runtime and model on another run/machine


def run(ctx: BuildContext) -> dict:
    out = Path(ctx.config.out)
    staging = ctx.workdir / "bundle"
    staging.mkdir()
    io = _copy_models(ctx, staging)
    golden = _write_golden(ctx, staging)
    if ctx.labels:
        (staging / "labels.txt").write_text("\n".join(ctx.labels) + "\n", encoding="utf-8")
    _copy_runner(ctx, staging)
    files = {p.name: {"sha256": sha256_file(p), "size_bytes": p.stat().st_size} for p in sorted(staging.iterdir())}
    man = report.manifest(ctx, files, io, golden)
    _write_reports(ctx, staging, man)
    (staging / "manifest.json").write_text(manifest_json(man), encoding="utf-8")
    publish(staging, out, force=ctx.config.force)
    return man


def _write_reports(ctx: BuildContext, staging: Path, man: dict) -> None:
    """README.md, report.md and report.html show the manifest, so they are written from it, then listed in it."""
    from .. import bundle_readme, html_report

    (staging / "README.md").write_text(bundle_readme.render(man), encoding="utf-8")
    (staging / "report.md").write_text(report.render_markdown(man), encoding="utf-8")
    layers = ctx.records.get("diagnosis", {}).get("layers")
    (staging / "report.html").write_text(html_report.render(man, layers), encoding="utf-8")
    for name in ("README.md", "report.md", "report.html"):
        man["files"][name] = {"sha256": sha256_file(staging / name), "size_bytes": (staging / name).stat().st_size}
    man["files"] = dict(sorted(man["files"].items()))


def _copy_models(ctx: BuildContext, staging: Path) -> dict:
    io = {}
    for fmt in ctx.target.formats:
        src = ctx.get(fmt, "int8").path
        dst = staging / report.MODEL_FILES[fmt]
        shutil.copyfile(src, dst)
        io[fmt] = backends.get(fmt).io_details(dst)
    return io


def _copy_runner(ctx: BuildContext, staging: Path) -> None:
    """run.py for the device; text bundles add the tokenizer it reads."""
    templates = Path(__file__).resolve().parent.parent / "templates"
    if ctx.model.text is None:
        shutil.copyfile(templates / "run.py", staging / "run.py")
        return
    shutil.copyfile(templates / "run_text.py", staging / "run.py")
    shutil.copyfile(ctx.model.text.tokenizer, staging / report.TOKENIZER_FILE)


def _write_golden(ctx: BuildContext, staging: Path) -> dict:
    """One real input and every shipped model's output on it, for `edgepack verify` and run.py --golden.
    Images: the input as 'input'; text: each token array under its input name."""
    from ..data import rows
    from ..golden_check import outputs_for

    x = rows(ctx.val.x, 0, 1)
    outs = {}
    for fmt in ctx.target.formats:  # every output of every model (golden_check.output_key names them)
        outs.update(outputs_for(fmt, backends.get(fmt).Runner(ctx.get(fmt, "int8").path, threads=1).run_outputs(x)))
    inputs = x if isinstance(x, dict) else {"input": x}
    with open(staging / "golden.npz", "wb") as fh:
        np.savez(fh, **inputs, **outs)
    return {"file": "golden.npz", "tolerance": GOLDEN_TOLERANCE}


def publish(staging: Path, out: Path, *, force: bool) -> None:
    """Move the finished folder to ``out`` and write ``out.zip``; never leave either half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    zip_final = out.with_name(out.name + ".zip")
    for existing in (out, zip_final):
        if existing.exists() and not force:
            raise OutputError(f"output {existing} already exists", hint="pass --force to replace it, or another --out")
    tmp_dir = out.with_name(f".{out.name}.partial-{os.getpid()}")
    tmp_zip = out.with_name(f".{out.name}.zip.partial-{os.getpid()}")
    try:
        shutil.copytree(staging, tmp_dir)
        write_zip(tmp_dir, tmp_zip, out.name)
        _replace(tmp_dir, out)
        os.replace(tmp_zip, zip_final)
    except OSError as exc:
        raise OutputError(f"cannot write the bundle to {out.parent}: {exc.strerror or exc}",
                          hint="check the folder is writable and the disk has space") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_zip.unlink(missing_ok=True)


def _replace(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        trash = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, trash)
        os.replace(src, dst)
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:  # a file or a link that --force replaced: no hidden .NAME.old-PID left beside the bundle
            trash.unlink(missing_ok=True)
    else:
        os.replace(src, dst)


def write_zip(folder: Path, path: Path, root: str) -> None:
    """Deterministic zip: sorted entries, fixed timestamps and permissions, under ``root/``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            info = zipfile.ZipInfo(f"{root}/{f.name}", date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, f.read_bytes())
