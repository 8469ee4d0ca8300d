"""Per-format backends, imported lazily: `get("onnx")` imports only what ONNX needs.

A backend module provides ``Runner(path, threads)`` with ``run(x_nchw) -> logits`` and
``io_details(path)``; conversion functions are format-specific and called by the stages.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = {
    "onnx": "edgepack.backends.onnx",
    "tflite": "edgepack.backends.tflite",
}


def get(fmt: str) -> ModuleType:
    """Import the backend for ``fmt`` on first use."""
    return importlib.import_module(BACKENDS[fmt])
