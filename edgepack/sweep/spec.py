"""SWEEP.toml: which models, targets and build settings a sweep tries, validated once.

A sweep file has the same keys as `edgepack build --config` (in [base], [grid] and [[trial]]) plus the lists
of models and targets and a [sweep] table saying how it runs::

    models = ["examples.fashion_mnist.model:create_model"]
    targets = ["raspberry-pi-4", "x86-64"]

    [base]                                   # every trial
    calib = "build/sweep-data/calib.npz"
    input_shape = [1, 3, 96, 96]

    [grid]                                   # every combination of these values
    "prune.ratio" = ["none", 0.2, 0.4]       # "none": the key is left out (here: no pruning)
    calibration_method = ["minmax", "percentile"]

    [[trial]]                                # explicit trials, in addition to the grid
    calibration_method = "entropy"

Trials = models x targets x (grid combinations + [[trial]] tables). Like schema.parse, every problem in the file
is collected and raised once, with a did-you-mean for misspelt keys.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack import schema
from edgepack.config import PREPROCESS_KEYS, BuildConfig
from edgepack.errors import ConfigError, EdgepackError, InputError, did_you_mean
from edgepack.schema import spec

NONE = "none"  # a grid or trial value that leaves the key out
RESERVED = {"out": "each trial's bundle goes to OUT/trials/<key>/", "force": "the sweep decides (--resume, --force)",
            "model": "list models in `models = [...]`", "target": "list targets in `targets = [...]`"}
SETTING_KEYS = tuple(sorted({f.name for f in dataclasses.fields(BuildConfig)} | set(PREPROCESS_KEYS)))


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (the [sweep] table). Units: CPUs, seconds."""

    name: str = spec("sweep name, shown in sweep.html and sweep.json", "sweep")
    cpus_per_trial: int = spec("CPUs each trial reserves on its node (Ray num_cpus)", 1, ge=1, le=256)
    max_retries: int = spec("times a trial is retried when its worker or node dies (a trial that fails on its "
                            "own is recorded, not retried)", 2, ge=0, le=20)
    exclusive_timing: bool = spec("time host latency only while no other trial computes on the node (a per-node "
                                  "timing gate); false: time under load and label the figures 'shared'", True)
    max_timing_wait_s: float = spec("longest a trial waits for its node's exclusive timing window before it times "
                                    "anyway (labelled 'shared'), s", 1800.0, ge=1, le=86400)


@dataclass(frozen=True)
class SweepFile:
    """The whole sweep file."""

    models: tuple[Any, ...] = spec("model sources (as for `edgepack build MODEL`), or tables of build settings "
                                   "holding a `model` key (e.g. with its own weights)")
    targets: tuple[str, ...] = spec("target profile names (edgepack targets list) or .toml paths",
                                    ["raspberry-pi-4"])
    base: dict = spec("build settings every trial shares (the keys of `edgepack build --config`)", {})
    grid: dict = spec("setting -> list of values; every combination is a trial. Dotted keys reach into tables "
                      "('prune.ratio'); the value \"none\" leaves the key out", {})
    trial: tuple[dict, ...] = spec("explicit trials ([[trial]] tables of settings), in addition to the grid", [])
    sweep: SweepOptions = spec("how the sweep runs ([sweep] table)", SweepOptions())


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep: its file's settings plus where it came from (for the record in sweep.json)."""

    file: SweepFile
    source: str
    text: str

    @property
    def options(self) -> SweepOptions:
        return self.file.sweep


def load(path: str | Path) -> Sweep:
    """Read and validate a sweep file; raise one ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"sweep file not found: {path}", hint="edgepack sweep SWEEP.toml --out DIR") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read sweep file {path}: {exc}") from None
    return parse(text, where=str(path))


def parse(text: str, *, where: str) -> Sweep:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})", hint="check quoting and brackets") from None
    file = schema.parse(SweepFile, data, where=where)
    problems = check(file)
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems),
                          hint="the keys of [base], [grid] and [[trial]] are those of `edgepack build --config` "
                               "(see the README); models and targets are lists")
    return Sweep(file=file, source=where, text=text)


def check(file: SweepFile) -> list[str]:
    """Every structural problem of a parsed sweep file (settings values are checked per trial by the plan)."""
    problems: list[str] = []
    if not file.models:
        problems.append("models is empty: list at least one model source")
    for i, m in enumerate(file.models):
        if isinstance(m, dict):
            if not isinstance(m.get("model"), str):
                problems.append(f"models[{i}] is a table without a `model = \"...\"` source")
            problems += _check_keys(m, f"models[{i}]", allow={"model"})
        elif not isinstance(m, str):
            problems.append(f"models[{i}] must be a model source string or a table, got {type(m).__name__}")
    if not file.targets:
        problems.append("targets is empty: list at least one target profile")
    problems += _check_targets(file.targets)
    problems += _check_keys(file.base, "[base]")
    problems += _check_keys(file.grid, "[grid]")
    for key, values in file.grid.items():
        if not isinstance(values, list) or not values:
            problems.append(f"[grid] {key} must be a non-empty list of values, e.g. {key} = [0.2, 0.4]")
        elif len({repr(v) for v in values}) != len(values):
            problems.append(f"[grid] {key} lists a value twice")
    for i, t in enumerate(file.trial):
        problems += _check_keys(t, f"[[trial]] {i + 1}", allow={"model", "target"})
    return problems


def _check_keys(table: dict, where: str, allow: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Top-level names of (possibly dotted) setting keys: known, and not ones the sweep sets itself."""
    problems = []
    for key in table:
        head = str(key).split(".", 1)[0]
        if head in allow:
            continue
        if head in RESERVED:
            problems.append(f"{where}: '{head}' cannot be set here ({RESERVED[head]})")
        elif head not in SETTING_KEYS and head != "preprocess":
            suggestion = did_you_mean(head, SETTING_KEYS)
            problems.append(f"{where}: unknown setting '{key}'" + (f" ({suggestion})" if suggestion else ""))
    return problems


def _check_targets(names: tuple[str, ...]) -> list[str]:
    from edgepack import targets

    problems = []
    for name in names:
        try:
            targets.load(name)
        except EdgepackError as exc:
            problems.append(exc.message)
    return problems
