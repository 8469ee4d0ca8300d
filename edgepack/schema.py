"""Validate plain dicts (from TOML or JSON) into frozen dataclasses, collecting every problem.

Each dataclass field carries its schema in ``metadata``: ``doc`` (what it means, with units),
optional ``ge``/``le`` bounds and ``choices``. Unknown keys are rejected with a did-you-mean.
All problems are gathered and raised once, so a person fixes a file in one pass.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from edgepack.errors import ConfigError, did_you_mean

T = TypeVar("T")
_MISSING = dataclasses.MISSING


def spec(doc: str, default: Any = _MISSING, *, ge: float | None = None, le: float | None = None,
         choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its documentation and bounds."""
    meta = {"doc": doc, "ge": ge, "le": le, "choices": choices}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


#: how a message names a type: (one, several)
_WORDS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "true/false values"), dict: ("a table", "tables")}
_EXAMPLES = {int: "[1, 3, 224, 224]", float: "[0.485, 0.456, 0.406]"}


def describe_type(tp: Any) -> str:
    """A type as a message says it to a person: 'a list of integers like [1, 3, 224, 224]', not 'tuple'."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (tuple, list):
        inner = typing.get_args(tp)[0]
        several = "tables" if dataclasses.is_dataclass(inner) else _WORDS.get(inner, (None, f"{_type_name(inner)}"))[1]
        return f"a list of {several}" + (f" like {_EXAMPLES[inner]}" if inner in _EXAMPLES else "")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return f"a table of {tp.__name__} settings"
    return _WORDS.get(tp, (_type_name(tp),))[0]


def _describe_value(value: Any) -> str:
    """What was given instead, for a message: a TOML string, list, table or number as written."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a table"
    return repr(list(value) if isinstance(value, tuple) else value)


def split_numbers(text: str, kind: type) -> list:
    """A list of numbers written as text, as the command line takes it: '1,3,224,224', '[1, 3, 224, 224]' or
    '1x3x224x224' (integers). ValueError when it is not one."""
    body = text.strip().strip("[]()").replace(" ", "")
    if kind is int:
        body = body.replace("x", ",")
    values = [kind(v) for v in body.split(",") if v.strip()]
    if not values:
        raise ValueError(f"no numbers in {text!r}")
    return values


def _check_type(value: Any, tp: Any) -> Any:
    """Return the value coerced to ``tp`` (int->float, list->tuple, a string of numbers -> a list of them) or raise
    TypeError saying what ``tp`` is in words (describe_type)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _check_union(value, tp)
    if origin in (tuple, list):
        return _check_list(value, tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise TypeError(describe_type(tp))
        return parse(tp, value, where=tp.__name__)  # a nested table, e.g. one [[reference]] entry
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return _finite_float(value)
    if tp is Any or (isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise TypeError(describe_type(tp))


def _check_union(value: Any, tp: Any) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    real = [a for a in args if a is not type(None)]
    for arg in real:
        try:
            return _check_type(value, arg)
        except TypeError as exc:
            if len(real) == 1 and "finite" in str(exc):
                raise  # "a finite number" says more than "a number"
            continue
    raise TypeError(describe_type(tp))


def _check_list(value: Any, tp: Any) -> tuple:
    inner = typing.get_args(tp)[0]
    if isinstance(value, str) and inner in (int, float):  # "1,3,224,224", as the command line takes it
        try:
            value = split_numbers(value, inner)
        except ValueError:
            raise TypeError(describe_type(tp)) from None
    if not isinstance(value, list | tuple):
        raise TypeError(describe_type(tp))
    try:
        return tuple(_check_type(v, inner) for v in value)
    except TypeError as exc:
        if "finite" in str(exc):
            raise
        raise TypeError(describe_type(tp)) from None


def _finite_float(value: int | float) -> float:
    """A float field's value: NaN, infinities and integers too large for a float are refused (a NaN budget
    would pass every comparison and be found only when the manifest is written)."""
    try:
        number = float(value)
    except OverflowError:
        raise TypeError("a finite number") from None
    if not math.isfinite(number):
        raise TypeError("a finite number (not NaN or infinity)")
    return number


def _check_bounds(name: str, value: Any, meta: dict) -> str | None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if meta.get("choices") and v not in meta["choices"]:
            hint = did_you_mean(str(v), meta["choices"]) or f"one of {', '.join(meta['choices'])}"
            return f"{name} = {v!r} is not allowed ({hint})"
        if isinstance(v, int | float) and meta.get("ge") is not None and v < meta["ge"]:
            return f"{name} = {v} is below the minimum {meta['ge']}"
        if isinstance(v, int | float) and meta.get("le") is not None and v > meta["le"]:
            return f"{name} = {v} is above the maximum {meta['le']}"
    return None


#: where a ConfigError from parse() sends a person when the caller names no better place
DEFAULT_HINT = "see the README for every key, its meaning and bounds"


def parse(cls: type[T], data: Any, *, where: str, hint: str = DEFAULT_HINT, elsewhere: dict | None = None) -> T:
    """Build ``cls`` from ``data`` or raise one ConfigError listing every problem found in ``where``; ``hint``
    says where the keys are listed (a profile's: `edgepack targets show`; a build's: `edgepack build --help`).
    ``elsewhere``: {key: where that key's value came from instead} (a command-line option over a --config file:
    `--input-shape 1,3,0,224` was reported as a fault of the file, which says [1, 3, 224, 224])."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key in sorted(data, key=str):
        if key not in fields:
            suggestion = did_you_mean(str(key), fields)
            problems.append(f"unknown key '{key}'" + (f" ({suggestion})" if suggestion else ""))
            continue
        try:
            values[key] = _check_type(data[key], hints[key])
        except TypeError as exc:
            problems.append(f"{key} must be {exc}, got {_describe_value(data[key])}"[:200])
            continue
        except ConfigError as exc:  # a nested table (array of tables) with its own problems
            problems.append(f"{key}: {exc.message}")
            continue
        problem = None if values[key] is None else _check_bounds(key, values[key], fields[key].metadata)
        if problem:
            problems.append(problem)
    for name, f in fields.items():
        if name not in values and f.default is _MISSING and f.default_factory is _MISSING:
            problems.append(f"missing required key '{name}' ({f.metadata.get('doc', '')})")
    if problems:
        moved = elsewhere or {}
        mine = [p for p in problems if not any(p.startswith((f"{k} ", f"{k}:")) for k in moved)]
        theirs = [f"{moved[k]}: {p}" for p in problems for k in moved if p.startswith((f"{k} ", f"{k}:"))]
        raise ConfigError("; ".join(([f"{where}: " + "; ".join(mine)] if mine else []) + theirs), hint=hint)
    return cls(**values)


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(key, type, doc with bounds) for every field, for help output and docs."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        bounds = [f"{k} {f.metadata[k]}" for k in ("ge", "le") if f.metadata.get(k) is not None]
        if f.metadata.get("choices"):
            bounds.append("one of " + ", ".join(f.metadata["choices"]))
        doc = f.metadata.get("doc", "") + (f" [{'; '.join(bounds)}]" if bounds else "")
        rows.append((f.name, _type_name(hints[f.name]), doc))
    return rows
