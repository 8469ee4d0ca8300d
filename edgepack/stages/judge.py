"""Every output is judged: per-output SQNR (dB) of INT8 vs FP32, and a floor for outputs no other budget covers.

The classification budgets (accuracy drop, top-1 agreement) judge the first output when it is (N, classes)
and a quality budget is set. Every other output - the second output of a two-headed model, a feature map, a
1-D score - is judged by ``min_output_sqnr_db`` (a budget in profiles and configs; 10 dB by default, where the
INT8 error is a third of the signal's amplitude; at 0 dB it is as large as the signal). When the budget is
set explicitly it judges every output, the first included. A model nothing judges cannot PASS silently.

An integer output (a class map from an in-graph argmax, class ids, a count: an int/bool dtype with no
quantization scale) is not a signal with noise: its SQNR reads a class id 3 given as 1 as an amplitude error, and
an exact match as "999 dB". It is judged by the fraction of its elements equal to FP32's, against
``min_agreement`` (the command line's, else the profile's, else DEFAULT_MIN_OUTPUT_MATCH).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from edgepack.backends.base import integer_output
from edgepack.tasks.base import match_fraction, sqnr_db
from edgepack.tasks.generic import DEFAULT_MIN_SQNR_DB as DEFAULT_MIN_OUTPUT_SQNR_DB  # noqa: E402

JUDGE_SAMPLES = 32    # validation samples run again to compare the outputs after the first
#: an integer output must equal FP32's on this fraction of its elements when no min_agreement is set
DEFAULT_MIN_OUTPUT_MATCH = 0.95


def _declared(backend, path) -> list[dict]:
    """The file's declared outputs (name, dtype, quantization); [] when it cannot be read: names are labels
    and integer flags choose a judge, the numbers come from the runs."""
    try:
        return backend.io_details(path)["outputs"]
    except Exception:
        return []


def _names(declared: list[dict], count: int) -> list[str]:
    names = [o["name"] for o in declared]
    return names if len(names) == count else [f"output{i}" for i in range(count)]


def _integer(declared: list[dict]) -> list[bool]:
    """Per declared output: True for an integer or bool output with no quantization scale (a class map, class
    ids, a count), which is judged by equality, not SQNR."""
    return [integer_output(o) for o in declared]


def first_output_integer(ctx) -> bool:
    """Whether the model's first output is integer (judged by equality), read from its FP32 file once (the
    accuracy search asks for every trial)."""
    fmt = ctx.target.formats[0]
    path = Path(ctx.get(fmt, "fp32").path)
    stat = path.stat()
    return _first_integer(fmt, str(path), (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _first_integer(fmt: str, path: str, stamp: tuple) -> bool:
    """first_output_integer of the file at ``path`` as it was at ``stamp`` (mtime, size)."""
    from edgepack import backends

    return _integer(_declared(backends.get(fmt), Path(path)))[:1] == [True]


def per_output(ctx, fmt: str, first_sqnr: float, first: tuple | None = None) -> tuple[dict, dict]:
    """({output name: SQNR dB}, {integer output name: fraction equal to FP32}). The first output's figures come
    from the validation run (``first``: its FP32 and INT8 outputs, for an integer first output), the others'
    from JUDGE_SAMPLES samples run again through both models (only for models with several outputs)."""
    from edgepack import backends
    from edgepack.inputs.data import num_samples, rows
    from edgepack.util import host_cores

    backend = backends.get(fmt)
    int8_path = ctx.get(fmt, "int8").path
    declared = _declared(backend, int8_path)
    integer = _integer(declared)
    name0 = declared[0]["name"] if declared else "output0"
    matches = ({name0: match_fraction(*first)} if integer[:1] == [True] and first is not None else {})
    if len(declared) <= 1:
        return ({} if matches else {name0: first_sqnr}), matches
    fp32 = backend.Runner(ctx.get(fmt, "fp32").path, threads=host_cores())
    int8 = backend.Runner(int8_path, threads=host_cores())
    n_out = len(fp32.run_outputs(rows(ctx.val.x, 0, 1)))
    names = _names(declared, n_out)
    integer = integer if len(integer) == n_out else [False] * n_out
    refs: list[list[np.ndarray]] = [[] for _ in range(n_out)]
    gots: list[list[np.ndarray]] = [[] for _ in range(n_out)]
    for i in range(min(JUDGE_SAMPLES, num_samples(ctx.val.x))):
        sample = rows(ctx.val.x, i, i + 1)
        for k, (r, g) in enumerate(zip(fp32.run_outputs(sample), int8.run_outputs(sample), strict=True)):
            refs[k].append(np.ravel(r))
            gots[k].append(np.ravel(g))
    sqnrs = {} if matches else {names[0]: first_sqnr}
    for k in range(1, n_out):
        ref, got = np.concatenate(refs[k]), np.concatenate(gots[k])
        if integer[k]:
            matches[names[k]] = match_fraction(ref, got)
        else:  # centred: an output's constant offset (a depth map in mm) is not signal INT8 has to keep
            sqnrs[names[k]] = round(sqnr_db(ref, got, centered=True), 2)
    return sqnrs, matches


def sqnr_floor(ctx) -> tuple[float, bool]:
    """(min_output_sqnr_db in dB, whether it was set): the command line's, else the profile's, else the default."""
    explicit = ctx.config.min_output_sqnr_db
    if explicit is None:
        explicit = ctx.target.min_output_sqnr_db
    return (DEFAULT_MIN_OUTPUT_SQNR_DB, False) if explicit is None else (explicit, True)


def match_floor(ctx) -> float:
    """The equal fraction an integer output must reach: min_agreement (command line, else profile), else
    DEFAULT_MIN_OUTPUT_MATCH."""
    for value in (ctx.config.min_agreement, ctx.target.min_agreement):
        if value is not None:
            return value
    return DEFAULT_MIN_OUTPUT_MATCH


def budget_rows(ctx, sqnrs: dict[str, float], first_judged: bool,
                matches: dict[str, float] | None = None) -> list[dict]:
    """min_output_sqnr_db rows for the outputs the classification budgets do not judge (all, when set), and an
    output_match row for every integer output."""
    floor, explicit = sqnr_floor(ctx)
    rows = []
    for i, (name, value) in enumerate(sqnrs.items()):
        if i == 0 and first_judged and not explicit:
            continue
        row = {"name": f"output_sqnr_db[{name}]", "value": value, "limit": floor, "op": ">=",
               "passed": bool(value >= floor)}
        if not explicit:
            row["kind"] = "default floor"
        rows.append(row)
    limit = match_floor(ctx)
    for name, value in (matches or {}).items():
        rows.append({"name": f"output_match[{name}]", "value": value, "limit": limit, "op": ">=",
                     "passed": bool(value >= limit)})
    return rows
