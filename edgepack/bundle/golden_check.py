"""The golden sample of a bundle: one input and every output of every shipped model on it.

``golden.npz`` holds the input (``input``, or each token array by its input name for text models) and, per
model format, its outputs: ``<format>`` for the first output (the name older bundles use) and
``<format>.<i>`` for output i >= 1. ``load`` reads it as untrusted data (no pickles, no object arrays, a size
cap); ``max_diff`` runs a model on the golden input and compares *every* output.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError, VerifyError

MAX_GOLDEN_BYTES = 1 << 30
_HINT = "the bundle was modified or damaged; rebuild it or fetch it again"


def output_key(fmt: str, index: int) -> str:
    """The golden.npz key of output ``index`` of the ``fmt`` model."""
    return fmt if index == 0 else f"{fmt}.{index}"


def outputs_for(fmt: str, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """{golden key: array} for every output of one model."""
    return {output_key(fmt, i): np.asarray(o) for i, o in enumerate(outputs)}


def load(path: Path) -> dict[str, np.ndarray]:
    """Every array in golden.npz, read without pickles; VerifyError when it is not such a file."""
    try:
        with zipfile.ZipFile(path) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
        if unpacked > MAX_GOLDEN_BYTES:
            raise VerifyError(f"{path.name} unpacks to {unpacked} bytes: more than a golden sample holds", hint=_HINT)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except VerifyError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise VerifyError(f"{path.name} is not a golden sample edgepack can read: {str(exc)[:160]}",
                          hint=_HINT) from None
    bad = [k for k, a in arrays.items() if a.dtype.kind not in "biuf"]
    if bad:
        raise VerifyError(f"{path.name}: array(s) {', '.join(bad[:5])} are not numeric", hint=_HINT)
    return arrays


def max_diff(model: Path, fmt: str, feed, golden: dict[str, np.ndarray]) -> float:
    """Largest |output - golden| over every output of the model at ``model`` on the golden input."""
    from edgepack import backends

    try:
        outs = backends.get(fmt).Runner(model, threads=1).run_outputs(feed)
    except EdgepackError as exc:
        raise VerifyError(f"{model.name}: {exc.message}", hint=_HINT) from None
    except Exception as exc:  # a runtime refusing an untrusted model or input: the bundle is bad, not edgepack
        raise VerifyError(f"{model.name} cannot run on the golden input: {type(exc).__name__}: {str(exc)[:200]}",
                          hint=_HINT) from None
    worst = 0.0
    for i, out in enumerate(outs):
        key = output_key(fmt, i)
        if key not in golden:
            raise VerifyError(f"golden file lacks output {i} of {model.name} ('{key}')",
                              hint="bundles from older edgepack versions kept only the first output: rebuild it")
        want = golden[key]
        if np.shape(out) != want.shape:
            raise VerifyError(f"{model.name}: output {i} has shape {list(np.shape(out))}, the golden one "
                              f"{list(want.shape)}", hint=_reordered_hint(fmt, outs, golden))
        if want.size:
            diff = np.abs(np.asarray(out, np.float64) - want.astype(np.float64))
            worst = max(worst, float(np.max(diff)) if np.isfinite(diff).all() else float("inf"))
    return worst


def _reordered_hint(fmt: str, outs: list, golden: dict[str, np.ndarray]) -> str:
    """The hint for an output whose shape is not the golden one: when the golden outputs are the same shapes in
    another order, the bundle predates edgepack keeping a TFLite model's outputs in the source model's order
    (before, they came in the converter's tensor order); else the generic one."""
    have = sorted(tuple(np.shape(o)) for o in outs)
    kept = sorted(tuple(golden[output_key(fmt, i)].shape) for i in range(len(outs)) if output_key(fmt, i) in golden)
    if fmt == "tflite" and have == kept:
        return ("the golden outputs are the same shapes in another order: the bundle was built by an edgepack that "
                "listed a TFLite model's outputs in the converter's order; rebuild it")
    return _HINT
