"""Every output is judged: per-output SQNR (dB) of INT8 vs FP32, and a floor for outputs no other budget covers.

The classification budgets (accuracy drop, top-1 agreement) judge the first output when it is (N, classes)
and a quality budget is set. Every other output - the second output of a two-headed model, a feature map, a
1-D score - is judged by ``min_output_sqnr_db`` (a budget in profiles and configs; 10 dB by default, where the
INT8 error is a third of the signal's amplitude; at 0 dB it is as large as the signal). When the budget is
set explicitly it judges every output, the first included. A model nothing judges cannot PASS silently.
"""

from __future__ import annotations

import numpy as np

from edgepack.tasks.base import sqnr_db
from edgepack.tasks.generic import DEFAULT_MIN_SQNR_DB as DEFAULT_MIN_OUTPUT_SQNR_DB  # noqa: E402

JUDGE_SAMPLES = 32    # validation samples run again to compare the outputs after the first


def _output_names(backend, path, count: int) -> list[str]:
    try:
        names = [o["name"] for o in backend.io_details(path)["outputs"]]
    except Exception:  # names are labels only; the numbers come from the runs
        names = []
    if count < 0:
        return names
    return names if len(names) == count else [f"output{i}" for i in range(count)]


def per_output_sqnr(ctx, fmt: str, first_sqnr: float) -> dict[str, float]:
    """{output name: SQNR dB}: the first output's from the validation run, the others from JUDGE_SAMPLES
    samples run again through both models (only for models with several outputs)."""
    from edgepack import backends
    from edgepack.inputs.data import num_samples, rows
    from edgepack.util import host_cores

    backend = backends.get(fmt)
    declared = _output_names(backend, ctx.get(fmt, "int8").path, -1)
    if len(declared) <= 1:
        return {(declared or ["output0"])[0]: first_sqnr}
    fp32 = backend.Runner(ctx.get(fmt, "fp32").path, threads=host_cores())
    int8 = backend.Runner(ctx.get(fmt, "int8").path, threads=host_cores())
    n_out = len(fp32.run_outputs(rows(ctx.val.x, 0, 1)))
    names = _output_names(backend, ctx.get(fmt, "int8").path, n_out)
    refs: list[list[np.ndarray]] = [[] for _ in range(n_out)]
    gots: list[list[np.ndarray]] = [[] for _ in range(n_out)]
    for i in range(min(JUDGE_SAMPLES, num_samples(ctx.val.x))):
        sample = rows(ctx.val.x, i, i + 1)
        for k, (r, g) in enumerate(zip(fp32.run_outputs(sample), int8.run_outputs(sample), strict=True)):
            refs[k].append(np.ravel(r))
            gots[k].append(np.ravel(g))
    # centred: an output's constant offset (a depth map in mm) is not signal INT8 has to keep
    found = {names[k]: round(sqnr_db(np.concatenate(refs[k]), np.concatenate(gots[k]), centered=True), 2)
             for k in range(1, n_out)}
    return {names[0]: first_sqnr, **found}


def sqnr_floor(ctx) -> tuple[float, bool]:
    """(min_output_sqnr_db in dB, whether it was set): the command line's, else the profile's, else the default."""
    explicit = ctx.config.min_output_sqnr_db
    if explicit is None:
        explicit = ctx.target.min_output_sqnr_db
    return (DEFAULT_MIN_OUTPUT_SQNR_DB, False) if explicit is None else (explicit, True)


def budget_rows(ctx, sqnrs: dict[str, float], first_judged: bool) -> list[dict]:
    """min_output_sqnr_db rows for the outputs the classification budgets do not judge (all, when set)."""
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
    return rows
