"""`edgepack sweep`: many builds (models x targets x settings) on Ray, with the Pareto front people choose from.

    import edgepack
    result = edgepack.sweep("examples/fashion_mnist/sweep.toml", out="build/sweep", resume=True)
    print(result.html_path, result.document["targets"])

spec.py reads SWEEP.toml, plan.py expands it into keyed trials, runner.py runs them on Ray (trial.py inside the
workers, gate.py for honest latency), store.py writes OUT/trials/<key>/ atomically, results.py and html.py
write sweep.json and sweep.html. Ray is imported only when a sweep runs (pip install 'edgepack[sweep]').
"""

from __future__ import annotations

import sys
import types

from edgepack.sweep.api import RunOptions, SweepProgress, SweepResult, run

__all__ = ["RunOptions", "SweepProgress", "SweepResult", "run"]


class _CallableModule(types.ModuleType):
    """`edgepack.sweep` is both this package and the API function: importing the package replaces the
    attribute `edgepack.sweep` (the lazy function in edgepack/__init__.py) with the module, so the module
    itself answers `edgepack.sweep(...)`."""

    def __call__(self, *args, **kwargs) -> SweepResult:
        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
