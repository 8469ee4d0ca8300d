"""Tasks: what differs by a model's *outputs* (how INT8 is judged against FP32, which budgets apply, what the
device runner prints). The stages ask the task; they never test what kind of model it is.

`TASKS` is a literal table; `for_outputs` picks the task from the model's output shapes when the user does not
name one: one (N, C) output is a classifier, anything else is judged output by output (generic). Inference stays
conservative: an (N, C, H, W) output may be a segmentation map or a feature map, an (N, K, 6) one boxes or not,
so detect and segment are only ever chosen by --task (or the TOML `task`).
"""

from __future__ import annotations

from edgepack.errors import ConfigError
from edgepack.tasks.base import Task
from edgepack.tasks.classify import Classify
from edgepack.tasks.detect import Detect
from edgepack.tasks.generic import Generic
from edgepack.tasks.segment import Segment

TASKS: dict[str, type[Task]] = {"classify": Classify, "detect": Detect, "segment": Segment, "generic": Generic}


def get(name: str, config=None) -> Task:
    """The task called ``name``; a task with settings (``from_config``, e.g. segment's threshold) takes them from
    ``config`` (a BuildConfig) when given."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}", hint=f"one of {', '.join(TASKS)}") from None
    return cls.from_config(config) if config is not None and hasattr(cls, "from_config") else cls()


def for_outputs(shapes: list[tuple]) -> Task:
    """Classification for a single (N, C) output with C > 1, generic (every output judged by SQNR) otherwise."""
    if len(shapes) == 1 and len(shapes[0]) == 2 and isinstance(shapes[0][-1], int) and shapes[0][-1] > 1:
        return Classify()
    return Generic()


__all__ = ["TASKS", "Task", "for_outputs", "get"]
