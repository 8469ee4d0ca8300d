"""Find the quantization parameters in a .tflite file that LiteRT cannot run, without running it.

LiteRT computes each quantized op's requantization multiplier (input scale x weight scale / output scale)
when it prepares the model, and abort()s the process when that number is out of range. The TFLiteConverter
writes such models without complaint when calibration saw absurd values: a tensor padded with float32's
minimum (onnx2tf's MaxPool padding) gets scale 1.33e36 (tensorflow/tensorflow#62196, #62605). Reading the
scales only parses the flatbuffer (no tensors are allocated), so this runs safely before anything prepares
the model, and after a crash to name the op at fault.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: an activation scale above this (real units per int8 step) is a broken calibration range, not data
MAX_SCALE = 1e10


def scale_faults(path: Path) -> list[str]:
    """"OP_TYPE:output_tensor_name (scale S)" for every op whose integer output has a non-finite or absurd scale
    (> MAX_SCALE), in graph order; [] for a sound model."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), num_threads=1,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    found = []
    for op in interp._get_ops_details():  # noqa: SLF001 - the only per-op view LiteRT's Python API gives
        for index in op["outputs"]:
            t = tensors.get(int(index))
            scales = t["quantization_parameters"]["scales"] if t is not None else np.zeros(0)
            if len(scales) and (not np.all(np.isfinite(scales)) or float(np.max(scales)) > MAX_SCALE):
                found.append(f"{op['op_name']}:{t['name']} (scale {float(np.max(scales)):.3g})")
    return found


def describe(faults: list[str]) -> str:
    """One sentence for an error message: the first op with a broken scale in full, then the others' types (the
    quantizer shares one scale along PAD/MAX_POOL chains, so the op that brought the extreme value is among them)."""
    others = sorted({f.split(":")[0] for f in faults[1:]})
    more = f" (then {', '.join(others)})" if others else ""
    return f"op {faults[0]}{more} got an absurd INT8 scale from calibration"


def diagnose(path: Path) -> str | None:
    """`describe` of the file's scale faults; None when the file is missing or sound (a crash's post-mortem)."""
    faults = scale_faults(path) if Path(path).is_file() else []
    return describe(faults) if faults else None
