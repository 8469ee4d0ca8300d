"""What `edgepack build --dry-run` checks without loading torch, the model or the data: that every file and folder
the config names exists, that a package.module:factory's module can be found (importlib's finders, nothing
imported), and that the target profile loads. A CI step can then check a config in about a second.

It checks existence only: whether a file holds what it should is found by the build itself (sources, data,
labels), with the same messages for anything missing.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

from edgepack.errors import InputError
from edgepack.inputs.sources import FACTORY

MODEL_FILES = (".onnx", ".pt2", ".pt", ".pth", ".ts", ".torchscript", ".jit")

#: config keys naming a file or folder: (key, what it is, must be: "file", "dir" or "any", hint when missing)
PATHS = (
    ("weights", "weights file", "file", "a state dict saved with torch.save (or .safetensors)"),
    ("calib", "calibration data", "any", "pass a folder of images or an .npz file (text models: .txt/.jsonl/.csv)"),
    ("val", "validation data", "any", "pass a folder of images or an .npz file (text models: .jsonl/.csv)"),
    ("labels", "labels file", "file", "a text file with one class name per line"),
    ("labels_dir", "labels folder", "any", "a folder of PNG masks or YOLO .txt files, or a COCO .json"),
    ("tokenizer", "tokenizer", "any", "a tokenizer.json, or a folder holding one"),
)


def check(config) -> None:
    """Raise InputError for the first thing named by ``config`` (a BuildConfig) that cannot be there when the build
    runs."""
    from edgepack import targets

    check_model(config.model)
    for key, what, kind, hint in PATHS:
        value = getattr(config, key)
        if value:
            check_path(value, what=f"{what} (--{key.replace('_', '-')})", kind=kind, hint=hint)
    finetune = config.prune.finetune if config.prune is not None else None
    if finetune is not None and finetune.data:
        check_path(finetune.data, what="fine-tuning data (--finetune)", kind="any",
                   hint="class folders of images or an .npz (text models: .jsonl/.csv/.txt)")
    targets.load(config.target)


def check_model(spec: str) -> None:
    """The model source: a model file or folder that exists, a factory whose module is findable, torchvision:<arch>
    (its architecture is checked by the build: listing them imports torchvision)."""
    if spec.startswith("torchvision:"):
        return
    path = Path(spec)
    if path.suffix.lower() in MODEL_FILES:
        check_path(spec, what="model file", kind="file", hint="check the path (relative to the current folder)")
        return
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path} is a folder without config.json: not a transformers model",
                             hint="a model folder is a transformers text classifier (config.json, model.safetensors, "
                                  "tokenizer.json)")
        return
    if FACTORY.match(spec):
        module = spec.split(":")[0]
        if not module_findable(module):
            raise InputError(f"cannot import factory '{spec}': no module named '{module}'",
                             hint="run from the folder that contains the package, or install it")
        return
    raise InputError(f"cannot tell what kind of model '{spec}' is",
                     hint="use torchvision:<arch>, package.module:factory, a .pt2/.pt/.onnx file path, "
                          "or a transformers model folder")


def module_findable(name: str) -> bool:
    """True when ``name`` (a.b.c) can be imported from here, as the build imports a factory (the current folder
    first): found by importlib's finders, package by package, without importing (and so running) any of it."""
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, str(Path.cwd()))
    try:
        parts = name.split(".")
        try:
            spec = importlib.util.find_spec(parts[0])   # a top-level name: found, not imported
        except (ImportError, ValueError):
            return False
        for part in parts[1:]:
            if spec is None or spec.submodule_search_locations is None:
                return False                            # not a package: it has no submodules
            spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
        return spec is not None
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))


def check_path(value: str, *, what: str, kind: str, hint: str) -> None:
    """InputError unless ``value`` exists (as a file for kind "file", a folder for "dir")."""
    path = Path(value)
    if not path.exists():
        raise InputError(f"{what} not found: {value}", hint=hint)
    if kind == "file" and not path.is_file():
        raise InputError(f"{what} is not a file: {value}", hint=hint)
    if kind == "dir" and not path.is_dir():
        raise InputError(f"{what} is not a folder: {value}", hint=hint)



def check_config_paths(config_file: str | Path, from_file: dict, merged: dict) -> None:
    """Paths in a --config file are relative to the current folder, as on the command line. When one the file
    sets (and the command line does not override) is missing here but exists beside the config file, say so now
    (the build would stop on it later with a plain 'not found')."""
    folder = Path(config_file).parent
    candidates = [(key, from_file.get(key)) for key in ("model", *(k for k, *_ in PATHS))
                  if merged.get(key) == from_file.get(key)]
    finetune = [_finetune_data(table) for table in (from_file, merged)]
    if finetune[0] == finetune[1]:
        candidates.append(("prune.finetune", finetune[0]))
    for key, value in candidates:
        if not isinstance(value, str) or not value or Path(value).is_absolute() or Path(value).exists():
            continue
        if key == "model" and (value.startswith("torchvision:") or FACTORY.match(value)):
            continue
        beside = folder / value
        if beside.exists():
            raise InputError(f"{key} = {value!r} in {config_file}: not found in the current folder ({Path.cwd()})",
                             hint=f"paths in a --config file are relative to the current folder, not to the file's; "
                                  f"{beside} exists: write {str(beside)!r} (or an absolute path) in the file")


def _finetune_data(table: dict):
    """A [prune] table's fine-tuning data (finetune = "x" or [prune.finetune] data = "x"), or None."""
    prune = table.get("prune")
    finetune = prune.get("finetune") if isinstance(prune, dict) else None
    return finetune.get("data") if isinstance(finetune, dict) else finetune
