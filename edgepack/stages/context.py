"""What flows between stages: the build's inputs, its model artifacts and what each stage recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.config import BuildConfig
from edgepack.inputs.data import Dataset
from edgepack.inputs.kinds import ImageInput
from edgepack.inputs.sources import LoadedModel
from edgepack.targets import TargetProfile
from edgepack.tasks import Task
from edgepack.util import ProgressFn, no_progress


@dataclass
class Artifact:
    """One model file produced by the build."""

    format: str        # "onnx" or "tflite"
    precision: str     # "fp32" or "int8"
    path: Path

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


@dataclass
class BuildContext:
    config: BuildConfig
    target: TargetProfile
    workdir: Path
    input_shape: tuple[int, ...]
    model: LoadedModel
    calib: Dataset
    val: Dataset
    inputs: ImageInput          # the input kind (edgepack.inputs.kinds): what differs by what the model takes
    task: Task                  # the task (edgepack.tasks): what differs by what it outputs
    val_is_calibration: bool = False
    labels: list[str] | None = None
    num_outputs: int | None = None
    progress: ProgressFn = no_progress
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unpruned: LoadedModel | None = None
    outputs: dict[str, Any] = field(default_factory=dict)  # cached model outputs on ctx.val, by artifact

    def add(self, artifact: Artifact) -> None:
        self.artifacts[f"{artifact.format}:{artifact.precision}"] = artifact

    def get(self, fmt: str, precision: str) -> Artifact:
        return self.artifacts[f"{fmt}:{precision}"]

    def warn(self, message: str) -> None:
        """Record a warning for the report and the manifest (the CLI shows them)."""
        import logging

        logging.getLogger("edgepack").info(message)  # the CLI prints them after the summary
        self.warnings.append(message)
