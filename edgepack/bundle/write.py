"""Publishing a finished bundle folder: beside its final name, then renamed into place, plus a deterministic
.zip (sorted entries, fixed timestamps and permissions). Nothing is ever left half-written."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from edgepack.errors import OutputError

ZIP_TIME = (1980, 1, 1, 0, 0, 0)


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
