"""The sweep's output folder, written only by the driver, one whole trial at a time.

    OUT/sweep.toml              the sweep file as run
    OUT/sweep.json, sweep.html  results (rewritten at the end of every run)
    OUT/trials/<key>/           one finished trial: trial.json (+ bundle/ and bundle.zip when it built)
    OUT/.staging/               trials being written; renamed into trials/ when complete, removed otherwise

A trial folder appears under trials/ by one rename of a complete folder, so an interrupted sweep leaves
finished trials intact and never a half-written one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from edgepack.errors import OutputError

TRIALS, STAGING, RECORD, BUNDLE = "trials", ".staging", "trial.json", "bundle"


def finished(out: Path) -> dict[str, dict[str, Any]]:
    """key -> trial.json of every complete trial under OUT/trials/."""
    rows = {}
    for d in sorted((out / TRIALS).iterdir()) if (out / TRIALS).is_dir() else []:
        try:
            rows[d.name] = json.loads((d / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not written by a finished trial (a stray folder): treated as missing
    return rows


def write_trial(out: Path, key: str, row: dict[str, Any], bundle_zip: bytes | None) -> Path:
    """Write one trial under OUT/.staging and rename it to OUT/trials/<key> (replacing an older one)."""
    staging = out / STAGING / f"{key}-{os.getpid()}"
    final = out / TRIALS / key
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if bundle_zip is not None:
            _extract(bundle_zip, staging)
            (staging / f"{BUNDLE}.zip").write_bytes(bundle_zip)
        (staging / RECORD).write_text(json.dumps(row, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            trash = out / STAGING / f"{key}-old-{os.getpid()}"
            os.replace(final, trash)
            os.replace(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
    except OSError as exc:
        raise OutputError(f"cannot write trial {key[:12]} under {out}: {exc.strerror or exc}",
                          hint="check the folder is writable and the disk has space") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _extract(data: bytes, dest: Path) -> None:
    """The bundle zip holds bundle/<file> entries only (edgepack's deterministic zip); anything else is refused."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if len(parts) != 2 or parts[0] != BUNDLE or parts[1] in ("", ".", ".."):
                raise OutputError(f"unexpected entry {info.filename!r} in a trial's bundle zip")
            target = dest / BUNDLE / parts[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))


def clear_staging(out: Path) -> None:
    """Remove what an interrupted run was writing (never a finished trial)."""
    shutil.rmtree(out / STAGING, ignore_errors=True)


def remove_trials(out: Path) -> None:
    """--force: forget every earlier trial."""
    shutil.rmtree(out / TRIALS, ignore_errors=True)


def manifest(out: Path, key: str) -> dict[str, Any] | None:
    path = out / TRIALS / key / BUNDLE / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
