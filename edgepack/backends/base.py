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
    """Runs one model file with a given thread count.

    ``arithmetic``: None follows the model (an INT8 ONNX model built for another ISA carries "reference": exact
    integer products, as the device computes them); "native" forces this host's own kernels (host latency)."""

    def __init__(self, path: Path, threads: int = 1, arithmetic: str | None = None): ...

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


def integer_output(tensor: dict) -> bool:
    """Whether an io_details tensor holds integers, not a quantized signal: an int or bool dtype with no
    quantization scale (class ids, an in-graph argmax's class map, a count)."""
    return np.dtype(tensor["dtype"]).kind in "iub" and not tensor.get("quantization")


def without_guessed_layouts(io: dict) -> dict:
    """``io`` (io_details) with no layout on an integer output below rank 4. The layout is guessed from the rank
    alone (a .tflite's 3-D tensor "NWC", 2-D "NC"), which describes a float feature map (a Conv1d's output) and
    called a per-token argmax (N, T, 1) "NWC". A 4-D integer map keeps its label: onnx2tf lays every 4-D tensor
    out NHWC, a class map (N, 1, H, W) too, and the runners turn it back."""
    def described(t: dict) -> dict:
        return {**t, "layout": None} if integer_output(t) and len(t["shape"]) < 4 else t

    return {**io, "outputs": [described(t) for t in io["outputs"]]}


#: the channels-last label of a tensor of each rank (what onnx2tf makes of an N, C, ... tensor)
CHANNELS_LAST = {4: "NHWC", 3: "NWC"}


def layouts_from_source(io: dict, source_shapes: list[list]) -> dict:
    """``io`` (a converted file's io_details) with each output's layout read from its shape against the source
    model's output of the same position (``source_shapes``, the FP32 ONNX model's, N, C, ... where it has
    channels): "NHWC"/"NWC" where the file holds that output channels-last, None where it keeps the source's
    order (a 3-D output) or "NC" (2-D), "NCHW" (4-D: onnx2tf leaves some as they are). The rank alone is the
    guess where the two orders give one shape (a size-1 or square axis) or a shape other than the batch is not
    fixed. The rank-guessed "NWC" called an SSD's boxes (1, 1170, 4), which onnx2tf leaves as they are,
    channels-last, as if they were (1, 4, 1170) transposed."""
    if len(source_shapes) != len(io["outputs"]):
        return without_guessed_layouts(io)

    def described(t: dict, source: list) -> dict:
        shape = list(t["shape"])
        if len(source) != len(shape) or not shape:
            return t
        source = [shape[0], *source[1:]]  # a symbolic batch (dynamic_axes) is the file's batch
        if not all(isinstance(d, int) and d > 0 for d in source):
            return t
        last = [source[0], *source[2:], source[1]] if len(source) >= 3 else source
        if shape == last and shape != source:
            return {**t, "layout": CHANNELS_LAST.get(len(shape))}
        if shape == source and shape != last:
            return {**t, "layout": {4: "NCHW", 2: "NC"}.get(len(shape))}
        return t

    guessed = without_guessed_layouts(io)
    return {**guessed, "outputs": [described(t, list(s or [])) for t, s in
                                   zip(guessed["outputs"], source_shapes, strict=True)]}


def all_samples(runner, x, progress) -> list[np.ndarray]:
    """Every output for every sample of x, batch 1, each output stacked over the samples."""
    from edgepack.inputs.data import num_samples, rows

    n, outs = num_samples(x), []
    for i in range(n):
        if progress and i % 16 == 0:
            progress(i, n)
        outs.append([o[0] for o in runner.run_outputs(rows(x, i, i + 1))])
    return [np.stack(k) for k in zip(*outs, strict=True)]


def tail_indices(ops: list[tuple[str, list, list]], stop_ops: frozenset) -> list[int]:
    """Indices of the ops (op type, input names, output names; in topological order, as ONNX and .tflite graphs
    list them) from which no op of ``stop_ops`` can be reached, the op itself included: the post-processing
    tail after a network's last convolution or matrix product. Both backends' float tails use it."""
    readers: dict = {}
    for k, (_, inputs, _) in enumerate(ops):
        for t in inputs:
            readers.setdefault(t, []).append(k)
    feeds = [False] * len(ops)
    for k in range(len(ops) - 1, -1, -1):  # readers come later in topological order
        kind, _, outputs = ops[k]
        feeds[k] = kind in stop_ops or any(feeds[r] for o in outputs for r in readers.get(o, ()))
    return [k for k in range(len(ops)) if not feeds[k]]
