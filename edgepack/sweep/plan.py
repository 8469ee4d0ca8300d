"""Expand a sweep into trials, each one ordinary build, keyed by a digest of everything that shapes its bundle.

key = sha256 of the canonical JSON of {edgepack version, the model's identity (file digest, or a factory
module's source and weight files, or the torchvision version), every resolved build setting (defaults
included) with data paths replaced by the digests of their contents, and the target profile}. So moving the
data leaves keys alone, and changing one setting changes only the keys of the trials it touches.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack import config as config_mod
from edgepack import targets as targets_mod
from edgepack.errors import ConfigError, EdgepackError
from edgepack.inputs.sources import FACTORY, factory_name
from edgepack.sweep.spec import NONE, Sweep
from edgepack.util import sha256_file
from edgepack.version import __version__

PATH_KEYS = ("calib", "val", "weights", "labels", "tokenizer")
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".onnx", ".npz")
MAX_SHOWN_PROBLEMS = 8


@dataclass(frozen=True)
class Trial:
    """One build of the sweep. ``settings`` is the flat mapping `config.from_mapping` takes (no out/force)."""

    key: str
    name: str
    model: str
    target: str
    varied: dict[str, Any]
    settings: dict[str, Any] = field(repr=False)


def expand(sweep: Sweep, *, cwd: Path | None = None) -> list[Trial]:
    """Every trial of ``sweep`` in file order (models, then targets, then grid / [[trial]] order), deduplicated
    by key. Relative paths are taken from ``cwd`` (default: the current folder) and made absolute, so workers
    find them whatever their own folder. Raises one ConfigError naming every trial setting that is invalid."""
    cwd = (cwd or Path.cwd()).resolve()
    digests = _Digests()
    trials, problems, seen = [], [], set()
    for mapping, varied in _mappings(sweep):
        mapping = _absolute(mapping, cwd)
        try:
            config = config_mod.from_mapping({**mapping, "out": "trial"}, where="trial")
            trial = _trial(mapping, varied, config, digests)
        except EdgepackError as exc:
            problems.append(f"{_label(mapping, varied)}: {exc.message.removeprefix('trial: ')}")
            continue
        if trial.key not in seen:
            seen.add(trial.key)
            trials.append(trial)
    if problems:
        unique = list(dict.fromkeys(problems))
        more = f" (and {len(unique) - MAX_SHOWN_PROBLEMS} more)" if len(unique) > MAX_SHOWN_PROBLEMS else ""
        raise ConfigError(f"{sweep.source}: {len(unique)} trial(s) have invalid settings: "
                          + "; ".join(unique[:MAX_SHOWN_PROBLEMS]) + more,
                          hint="fix the values in [base], [grid] or [[trial]]; keys are those of "
                               "`edgepack build --config`")
    return trials


def _mappings(sweep: Sweep) -> list[tuple[dict, dict]]:
    """(build mapping, varied settings) for models x targets x (grid combinations + explicit trials)."""
    f = sweep.file
    grid_keys = list(f.grid)
    combos = [dict(zip(grid_keys, values, strict=True)) for values in itertools.product(*f.grid.values())]
    variants = ([c for c in combos if c] if grid_keys else []) + [_flatten(t) for t in f.trial]
    if not variants:
        variants = [{}]
    out = []
    for variant in variants:
        models = [variant["model"]] if "model" in variant else list(f.models)
        names = [variant["target"]] if "target" in variant else list(f.targets)
        for model, target in itertools.product(models, names):
            model_table = dict(model) if isinstance(model, dict) else {"model": model}
            mapping = copy.deepcopy(f.base)
            for key, value in [*_flatten(model_table).items(), ("target", target), *variant.items()]:
                _set(mapping, key, value)
            _drop_empty_prune(mapping)
            varied = {k: v for k, v in variant.items() if k not in ("model", "target")}
            out.append((mapping, varied))
    return out


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """{"prune": {"ratio": 0.2}} -> {"prune.ratio": 0.2}; dotted keys stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _set(mapping: dict, dotted: str, value: Any) -> None:
    """Set (or with "none", remove) a possibly dotted key in a nested mapping."""
    *parents, leaf = dotted.split(".")
    node = mapping
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {"data": child} if isinstance(child, str) else {}  # prune.finetune = "data.npz" shorthand
            node[part] = child
        node = child
    if isinstance(value, str) and value.lower() == NONE:
        node.pop(leaf, None)
    else:
        node[leaf] = copy.deepcopy(value)


def _drop_empty_prune(mapping: dict) -> None:
    """A [prune] table with neither ratio nor keep_macs left (e.g. prune.ratio = "none") means no pruning."""
    prune = mapping.get("prune")
    if isinstance(prune, dict) and prune.get("ratio") is None and prune.get("keep_macs") is None:
        mapping.pop("prune")


def _absolute(mapping: dict, cwd: Path) -> dict:
    mapping = copy.deepcopy(mapping)
    for key in PATH_KEYS:
        if isinstance(mapping.get(key), str):
            mapping[key] = str(cwd / mapping[key])
    ft = (mapping.get("prune") or {}).get("finetune") if isinstance(mapping.get("prune"), dict) else None
    if isinstance(ft, dict) and isinstance(ft.get("data"), str):
        ft["data"] = str(cwd / ft["data"])
    elif isinstance(ft, str):
        mapping["prune"]["finetune"] = str(cwd / ft)
    model = mapping.get("model")
    if isinstance(model, str) and not model.startswith("torchvision:") and not FACTORY.match(model):
        mapping["model"] = str(cwd / model)
    return mapping


def _label(mapping: dict, varied: dict) -> str:
    model = str(mapping.get("model", "?"))
    short = model.split(":")[-1] if FACTORY.match(model) or model.startswith("torchvision:") else Path(model).name
    if FACTORY.match(model) and not model.startswith("torchvision:"):  # as its bundle is named
        short = factory_name(*model.split(":", 1))
    label = f"{short} @ {mapping.get('target')}"
    if varied:
        label += " | " + ", ".join(f"{k}={v}" for k, v in varied.items())
    return label


def _trial(mapping: dict, varied: dict, config: Any, digests: _Digests) -> Trial:
    settings = config.to_dict()
    for key in ("out", "force"):
        settings.pop(key)
    for key in PATH_KEYS:
        if settings.get(key):
            settings[key] = {"sha256": digests.path(settings[key])}
    ft = (settings.get("prune") or {}).get("finetune")
    if ft and ft.get("data"):
        ft["data"] = {"sha256": digests.path(ft["data"])}
    profile = targets_mod.load(config.target).to_dict()
    profile.pop("path", None)
    body = {"edgepack": __version__, "model": digests.model(config.model), "settings": settings, "target": profile}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    key = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Trial(key=key, name=_label(mapping, varied), model=config.model, target=config.target, varied=varied,
                 settings=mapping)


class _Digests:
    """sha256 of data files and folders and of model identities, computed once per path."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def path(self, path: str) -> str:
        if path not in self._cache:
            self._cache[path] = _digest_path(Path(path))
        return self._cache[path]

    def model(self, spec: str) -> dict:
        if spec.startswith("torchvision:"):
            from importlib.metadata import version

            return {"spec": spec, "torchvision": version("torchvision")}
        if Path(spec).exists():
            return {"sha256": self.path(spec)}
        if FACTORY.match(spec):
            return {"spec": spec, "files": {p.name: self.path(str(p)) for p in _factory_files(spec)}}
        return {"spec": spec}


def _digest_path(path: Path) -> str:
    """A file's sha256; a folder's: sha256 over its files' relative paths and digests; 'missing' if absent."""
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
        return h.hexdigest()
    return f"missing:{path}"


def _factory_files(spec: str) -> list[Path]:
    """A factory module's source file and the weight files beside it (what its factory may load)."""
    module = spec.split(":")[0]
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as sources._factory does
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin or not Path(found.origin).is_file():
        return []
    origin = Path(found.origin)
    beside = [p for p in origin.parent.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    return sorted([origin, *beside])
