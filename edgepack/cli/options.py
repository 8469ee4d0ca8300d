"""The build options of `edgepack build / prune / diagnose`, generated from the config schema.

Every option comes from a `spec()` field of BuildConfig, Preprocess, PruneOptions or FinetuneOptions
(edgepack/config.py): its flag from the field name, its type and choices from the annotation and metadata, its
help from the field's doc. A new setting is declared once there and appears in `--help`, TOML and the Python API
alike. Bounds are checked by the schema (every problem reported at once), not by Click.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import click

from edgepack.config import BuildConfig, FinetuneOptions, Preprocess, PruneOptions
from edgepack.schema import split_numbers

#: flags that keep a shorter or historical name: field -> flag (dest is the flag's name with underscores)
RENAMED = {("BuildConfig", "target"): ("--target", "-t"), ("BuildConfig", "out"): ("--out", "-o"),
           ("PruneOptions", "ratio"): ("--prune",), ("PruneOptions", "iterative_steps"): ("--prune-steps",),
           ("FinetuneOptions", "data"): ("--finetune",), ("FinetuneOptions", "max_minutes"): ("--finetune-minutes",),
           ("FinetuneOptions", "distill"): ("--distill",),
           ("FinetuneOptions", "feature_weight"): ("--distill-features",)}
#: fields that are not command-line options (the positional MODEL, nested tables)
SKIP = {("BuildConfig", "model"), ("BuildConfig", "preprocess"), ("BuildConfig", "prune"),
        ("PruneOptions", "finetune")}
PREFIX = {"BuildConfig": "", "Preprocess": "", "PruneOptions": "prune-", "FinetuneOptions": "finetune-"}


def _csv(kind: type) -> Any:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list | None:
        if value is None:
            return None
        try:  # "1,3,224,224", "[1, 3, 224, 224]" as the TOML form and --help write it, "1x3x224x224"
            return split_numbers(value, kind)
        except ValueError:
            what = "integers, e.g. 1,3,224,224" if kind is int else "numbers, e.g. 0.485,0.456,0.406"
            raise click.BadParameter(f"'{value}' is not a comma-separated list of {what}") from None
    return parse


def _base(tp: Any) -> Any:
    """The annotation without None: int | None -> int."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, type(int | None)) and args else tp


def _option(cls: type, f: dataclasses.Field, tp: Any) -> tuple[Any, str]:
    """(click.option decorator, dest) for one schema field."""
    key = (cls.__name__, f.name)
    flags = RENAMED.get(key, (f"--{PREFIX[cls.__name__]}{f.name.replace('_', '-')}",))
    dest = flags[0].lstrip("-").replace("-", "_")
    doc = f.metadata.get("doc", "")
    base = _base(tp)
    kwargs: dict[str, Any] = {"help": doc[:1].upper() + doc[1:] + "."}
    if base is bool:
        name = flags[0][2:]
        decl = (f"--{name}/--no-{name}",) if f.default is not False else flags  # None: unset is a third value
        return click.option(*decl, dest, default=None, is_flag=True, **kwargs), dest
    if typing.get_origin(base) is tuple:
        inner = typing.get_args(base)[0]
        if inner is str:
            return click.option(*flags, dest, multiple=True, **kwargs), dest
        return click.option(*flags, dest, callback=_csv(inner), **kwargs), dest
    if f.metadata.get("choices"):
        kwargs["type"] = click.Choice(list(f.metadata["choices"]))
    elif base in (int, float):
        kwargs["type"] = base
    return click.option(*flags, dest, **kwargs), dest


def _generate() -> tuple[list[tuple[Any, str]], dict[str, str], dict[str, str]]:
    """([(click option, dest)], --prune* flags, --finetune* flags) for every schema field, --config last."""
    options, prune_flags, finetune_flags = [], {}, {}
    for cls in (BuildConfig, Preprocess, PruneOptions, FinetuneOptions):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if (cls.__name__, f.name) in SKIP:
                continue
            option, dest = _option(cls, f, hints[f.name])
            options.append((option, dest))
            if cls is PruneOptions:
                prune_flags[dest] = f.name
            elif cls is FinetuneOptions:
                finetune_flags[dest] = f.name
    options.append((click.option("--config", "config_file", type=click.Path(dir_okay=False),
                                 help="TOML file with these settings (option names with underscores; the command "
                                      "line overrides it)."), "config_file"))
    return options, prune_flags, finetune_flags


BUILD_OPTIONS, PRUNE_FLAGS, FINETUNE_FLAGS = _generate()


#: Build options that only a build uses (the bundle, quantization, validation budgets, devices): `prune` does not
#: offer them. A --config file may still hold them (prune reads the same files and ignores them).
BUILD_ONLY = frozenset({
    "out", "name", "prob_threshold", "box_format", "calibration_method", "per_channel", "weight_rounding",
    "max_search_time", "latency_runs", "max_accuracy_drop", "min_agreement", "max_miou_drop", "max_map_drop",
    "max_latency_ms", "max_size_mb", "min_output_sqnr_db", "estimate_device", "emulate", "allow_float_ops",
    "text_tflite_int8", "prune_max_drop"})


#: Build options `diagnose MODEL` uses: the model, its input and data, and the INT8 recipe it measures (on ONNX,
#: without search). Budgets, the bundle, pruning, fine-tuning and the device stage play no part in it, and --val is
#: its --data. A --config file may still hold the others (diagnose reads the same files and ignores them).
DIAGNOSE = frozenset({
    "task", "target", "calib", "tokenizer", "max_length", "weights", "num_classes", "input_shape", "calib_samples",
    "calibration_method", "per_channel", "weight_rounding", "seed", "trust_model", "resize", "crop", "mean", "std",
    "scale", "channel_order", "config_file"})


def build_options(fn: Any) -> Any:
    """Decorate a command with every build option."""
    for option, _ in reversed(BUILD_OPTIONS):
        fn = option(fn)
    return fn


def prune_options(fn: Any) -> Any:
    """Decorate a command with the build options pruning uses (all but BUILD_ONLY)."""
    for option, dest in reversed(BUILD_OPTIONS):
        if dest not in BUILD_ONLY:
            fn = option(fn)
    return fn


def diagnose_options(fn: Any) -> Any:
    """Decorate a command with the build options `diagnose MODEL` uses (DIAGNOSE)."""
    for option, dest in reversed(BUILD_OPTIONS):
        if dest in DIAGNOSE:
            fn = option(fn)
    return fn
