"""A clean venv holding only the packages a device runner may use (no torch, no transformers)."""

from __future__ import annotations

import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest


def clean_venv(folder: Path, packages: tuple[str, ...]) -> Path:
    """Create a venv in ``folder`` with ``packages`` at this environment's versions; return its python.

    Installs from the package index (about 25 s with a warm pip cache); skips the test when the index cannot
    be reached. Asserts torch is not importable there, so a runner that needs it fails.
    """
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    py = folder / "bin" / "python"
    pins = [f"{name}=={version(name)}" for name in packages]
    t0 = time.perf_counter()
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
                             capture_output=True, text=True)
    if install.returncode != 0:
        pytest.skip(f"cannot install {pins} into a clean venv: {install.stderr.strip()[-300:]}")
    print(f"clean venv install took {time.perf_counter() - t0:.0f} s")
    missing = subprocess.run([str(py), "-c", "import torch"], capture_output=True)
    assert missing.returncode != 0, "the clean venv must not see torch"
    return py
