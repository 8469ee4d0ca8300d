"""Tasks: what differs by a model's *outputs* (how INT8 is judged against FP32, which budgets apply, what the
device runner prints). The stages ask the task; they never test what kind of model it is.

`TASKS` is a literal table; `for_outputs` picks the task from the model's output shapes when the user does not
name one: one (N, C) output is a classifier, anything else is judged output by output (generic). Inference stays
conservative: an (N, C, H, W) output may be a segmentation map or a feature map, an (N, K, 6) one boxes or not,
so detect and segment are only ever chosen by --task (or the TOML `task`).
"""

from __future__ import annotations

from edgepack.errors import ConfigError
from edgepack.tasks.base import Task, score_count
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


def class_scores(shape: tuple) -> bool:
    """Whether an output shape reads as one score per class: (N, C) with C > 1, or (N, C, 1, 1), a 1x1-convolution
    head's (SqueezeNet, Caffe-converted models; the export stage flattens it to (N, C))."""
    return score_count(shape) is not None


def for_outputs(shapes: list[tuple]) -> Task:
    """Classification for a single (N, C) output with C > 1, generic (every output judged by SQNR) otherwise."""
    return Classify() if len(shapes) == 1 and class_scores(shapes[0]) else Generic()


__all__ = ["TASKS", "Task", "class_scores", "for_outputs", "get", "score_count"]
