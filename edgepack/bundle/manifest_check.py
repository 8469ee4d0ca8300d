"""Reading a bundle's manifest.json as the untrusted input it is.

``load_json`` parses with limits (size, nesting, numbers: no NaN, no infinity, no 5,000-digit integers);
``problems`` lists what in the manifest's shape would send verify or inspect astray (model and golden entries,
formats, tolerance, file names); ``rendering`` turns a missing or mistyped field met while showing a manifest
into VerifyError (exit 5) instead of a crash.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgepack.errors import VerifyError
from edgepack.guards.safety import safe_member_name

MAX_MANIFEST_BYTES = 32 << 20
MAX_DEPTH = 64
_HINT = "the bundle was edited or is not an edgepack bundle"


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return depth
        level = [v for x in level if isinstance(x, dict | list) for v in (x.values() if isinstance(x, dict) else x)]
    return depth


def load_json(path: Path) -> Any:
    """The JSON in ``path``, or VerifyError saying why it cannot be used."""
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise VerifyError(f"{path}: {size} bytes, more than any manifest edgepack writes", hint=_HINT)
        text = path.read_text(encoding="utf-8")
        value = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except VerifyError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError, too-long ints, inf
        raise VerifyError(f"{path}: not valid JSON for a manifest ({str(exc)[:160]})", hint=_HINT) from None
    except OSError as exc:
        raise VerifyError(f"cannot read {path}: {exc.strerror or exc}") from None
    if _depth(value) > MAX_DEPTH:
        raise VerifyError(f"{path}: nested more than {MAX_DEPTH} levels deep", hint=_HINT)
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _model_problems(i: int, m: Any, files: dict, formats: set[str]) -> list[str]:
    if not isinstance(m, dict):
        return [f"models[{i}] should be an object, got {type(m).__name__}"]
    problems = []
    if not safe_member_name(m.get("file")):
        problems.append(f"models[{i}].file {m.get('file')!r} is not a plain file name inside the bundle: refused")
    elif m["file"] not in files:
        problems.append(f"models[{i}].file '{m['file']}' is not listed in files")
    if not isinstance(m.get("format"), str) or m["format"] not in formats:
        problems.append(f"models[{i}].format {m.get('format')!r} is not one of {', '.join(sorted(formats))}")
    for key, kind in (("precision", str), ("sha256", str), ("inputs", list), ("outputs", list),
                      ("validation", dict)):
        if not isinstance(m.get(key), kind):
            problems.append(f"models[{i}].{key} should be {kind.__name__}")
    if not _number(m.get("size_bytes")):
        problems.append(f"models[{i}].size_bytes should be a number")
    for kind in ("inputs", "outputs"):
        for j, t in enumerate(m.get(kind) or [] if isinstance(m.get(kind), list) else []):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not isinstance(t.get("shape"), list):
                problems.append(f"models[{i}].{kind}[{j}] should be an object with a name and a shape")
    return problems


def problems(man: dict) -> list[str]:
    """What is wrong with the parts of a manifest (already a dict with the required keys) that commands use."""
    from edgepack.backends import BACKENDS

    files = man["files"] if isinstance(man.get("files"), dict) else {}
    found: list[str] = []
    models = man.get("models")
    if isinstance(models, list):
        if not models:
            found.append("models is empty")
        for i, m in enumerate(models[:16]):
            found += _model_problems(i, m, files, set(BACKENDS))
    golden = man.get("golden")
    if isinstance(golden, dict):
        if not safe_member_name(golden.get("file")):
            found.append(f"golden.file {golden.get('file')!r} is not a plain file name inside the bundle: refused")
        elif golden["file"] not in files:
            found.append(f"golden.file '{golden['file']}' is not listed in files")
        tol = golden.get("tolerance")
        if not _number(tol) or tol < 0:
            found.append(f"golden.tolerance {tol!r} should be a non-negative number")
        device = golden.get("device_tolerance", {})  # absent in bundles before December 2026
        if not isinstance(device, dict) or not all(
                isinstance(d, dict) and _number(d.get("value")) and d["value"] >= 0 for d in device.values()):
            found.append("golden.device_tolerance should map formats to {value: a non-negative number, basis}")
    pre = man.get("preprocess")
    if isinstance(pre, dict) and pre.get("kind") == "text" and not isinstance(pre.get("model_input_names"), list):
        found.append("preprocess.model_input_names should be a list")
    if isinstance(pre, dict) and pre.get("kind") == "tensors" and not (
            isinstance(pre.get("inputs"), list) and pre["inputs"] and all(
                isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("shape"), list)
                and isinstance(s.get("dtype"), str) for s in pre["inputs"])):
        found.append("preprocess.inputs should list {name, shape, dtype} for each input")
    return found


@contextlib.contextmanager
def rendering(where: str) -> Iterator[None]:
    """A manifest field that is missing or of the wrong type, met while showing it, is a VerifyError."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        raise VerifyError(f"{where}: the manifest lacks or mistypes a field ({type(exc).__name__}: "
                          f"{str(exc)[:120]})", hint=_HINT) from None
