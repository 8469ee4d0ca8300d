"""The backend contract: what every format module in BACKENDS provides (checked by tests/test_backends.py).

Conversion entry points differ by format (ONNX export + quantize_static; onnx2tf + the TFLite converter) and
are called by the INT8 recipes in edgepack.stages.quantize; running, describing and measuring a model are the
same for every format, and that is the contract below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

#: Model inputs: one array (images) or arrays by input name (several inputs, e.g. token ids)
Inputs = np.ndarray | dict[str, np.ndarray]


class Runner(Protocol):
    """Runs one model file with a given thread count."""

    def __init__(self, path: Path, threads: int = 1): ...

    def run(self, x: Inputs) -> np.ndarray:
        """One batch -> the first output (float32)."""

    def run_samples(self, x: Inputs, progress=None, all_outputs: bool = False) -> np.ndarray | list[np.ndarray]:
        """Every sample of ``x``, one at a time -> stacked first outputs (every output, stacked, with
        ``all_outputs``: detection heads have several)."""


class Backend(Protocol):
    """A format module: ``Runner``, ``io_details(path)`` -> {inputs, outputs} (name, shape, dtype, layout,
    quantization) and ``float_ops(path)`` -> ops left in float (empty for a model with none)."""

    Runner: type[Runner]

    def io_details(self, path: Path) -> dict: ...

    def float_ops(self, path: Path) -> list[str]: ...
