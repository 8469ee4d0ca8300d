"""A model's call arguments in the pruning code: one tensor (an image batch, a waveform) or, for a forward with
several arguments, a tuple of tensors in the forward's order. Torch-Pruning takes either (a tuple is passed as
positional arguments), and so do these helpers."""

from __future__ import annotations

from typing import Any


def to_torch(x) -> Any:
    """Calibration inputs as call arguments: an array -> a float32 tensor; {name: array} (in the forward's order)
    -> a tuple of tensors, float arrays as float32, integer ones in their own dtype."""
    import numpy as np
    import torch

    def one(a):
        a = np.asarray(a)
        return torch.from_numpy(np.ascontiguousarray(a, np.float32 if a.dtype.kind == "f" else a.dtype))

    return tuple(one(v) for v in x.values()) if isinstance(x, dict) else one(x)


def call(model, args):
    """``model(args)``, or ``model(*args)`` for several inputs."""
    return model(*args) if isinstance(args, tuple) else model(args)


def take(args, start: int, stop: int):
    """Samples start..stop-1 of every argument."""
    return tuple(a[start:stop] for a in args) if isinstance(args, tuple) else args[start:stop]


def count(args) -> int:
    """How many samples the arguments hold."""
    return len(args[0]) if isinstance(args, tuple) else len(args)


def first(out):
    """A model's first output (the one Taylor importance ranks by, and the pruned model must keep)."""
    return out[0] if isinstance(out, (tuple, list)) else out
