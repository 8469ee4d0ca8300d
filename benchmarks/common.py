"""Helpers shared by the benchmark programs: held-out photos and the BENCHMARKS.md table writer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_MD = Path(__file__).resolve().parent / "BENCHMARKS.md"


def natural_photos(count: int = 500) -> Path:
    """The held-out natural-photo crops (disjoint source photos from calibration_data/), made once."""
    out = ROOT / "build" / "natural_val"
    if len(list(out.glob("*.jpg"))) != count:
        subprocess.run([sys.executable, str(ROOT / "calibration_data/make_calibration.py"), "--split", "val",
                        "--count", str(count), "--out", str(out)], check=True)
    return out


def update_section(key: str, title: str, body: str) -> None:
    """Replace (or append) the section between <!-- key --> markers, leaving the others alone."""
    header = "# Benchmarks\n\nEvery table is written by a program in this folder, in one run on this machine.\n"
    text = BENCH_MD.read_text() if BENCH_MD.exists() else header
    section = f"<!-- {key} -->\n## {title}\n\n{body}\n<!-- /{key} -->"
    pattern = re.compile(rf"<!-- {re.escape(key)} -->.*?<!-- /{re.escape(key)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    BENCH_MD.write_text(text)
