"""Per-format backends behind one contract (edgepack.backends.base.Backend), imported lazily.

`BACKENDS` is a literal table: format -> (module, the optional packages it needs, the pip extra that installs
them). `get("tflite")` checks those packages first, so a missing install is a usage error (exit 2) with the
exact pip command, not an ImportError deep inside a stage.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgepack.util import require

BACKENDS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "onnx": ("edgepack.backends.onnx", ("onnx", "onnxruntime", "onnxslim"), None),
    "tflite": ("edgepack.backends.tflite", ("tensorflow", "onnx2tf", "ai_edge_litert"), "tflite"),
}


def get(fmt: str) -> ModuleType:
    """Import the backend for ``fmt`` on first use, after checking its optional dependencies are installed."""
    module, packages, extra = BACKENDS[fmt]
    require(packages, extra=extra, what=f"the {fmt} backend")
    return importlib.import_module(module)
