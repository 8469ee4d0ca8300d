"""BuildConfig: every setting of one build, from CLI options and/or a TOML file, validated once.

The CLI builds a BuildConfig and hands it to `api.build`; a `--config` TOML uses the same keys as
the long CLI options (with underscores). Options given on the command line override the file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack import schema
from edgepack.errors import ConfigError, InputError
from edgepack.schema import parse, spec
from edgepack.targets import CALIB_METHODS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input: resize short side, centre crop, scale, normalise.

    pixel' = (pixel * scale - mean) / std, per channel, in `channel_order`; layout NCHW float32.
    """

    resize: int | None = spec("resize the short side to this many pixels (default: crop / 0.875); a non-square "
                              "input's crop window fits resize / crop times over", None, ge=1, le=8192)
    crop: int | None = spec("centre crop height in pixels, its width in the model input's aspect ratio (default: "
                            "the model input's height)", None, ge=1, le=8192)
    mean: tuple[float, ...] = spec("per-channel mean subtracted after scaling", list(IMAGENET_MEAN))
    std: tuple[float, ...] = spec("per-channel std divided by after subtracting the mean", list(IMAGENET_STD),
                                  ge=1e-6)
    scale: float = spec("multiplier applied to 0-255 pixels first (1/255 for 0-1 inputs)", 1 / 255, ge=1e-6, le=1e6)
    channel_order: str = spec("channel order of the model input", "RGB", choices=("RGB", "BGR", "L"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


IMPORTANCES = ("magnitude", "taylor")
MAX_RATIO = 0.9   # highest channel ratio pruning may remove


@dataclass(frozen=True)
class FinetuneOptions:
    """Recovery fine-tuning settings (all optional but ``data``)."""

    data: str | None = spec("fine-tuning data: class folders of images or .npz with x (and y); for text models "
                            ".jsonl / .csv with text and label (or .txt with distill); unlabelled data needs "
                            "distill", None)
    epochs: int = spec("maximum passes over the training split", 3, ge=1, le=1000)
    lr: float = spec("Adam learning rate: a short linear warm-up, then cosine decay to 0 over the epochs, or "
                     "over the time budget when max_minutes ends training first", 3e-4, ge=1e-8, le=1.0)
    batch_size: int = spec("samples per optimizer step", 32, ge=1, le=4096)
    patience: int = spec("stop after this many epochs without a held-out improvement", 2, ge=1, le=1000)
    distill: bool = spec("learn from the unpruned model's soft outputs (works without labels)", False)
    temperature: float = spec("distillation softmax temperature", 4.0, ge=0.1, le=100.0)
    val_fraction: float = spec("held-out fraction of the data for early stopping", 0.1, ge=0.01, le=0.5)
    samples: int | None = spec("use at most this many samples (seeded subset; default all)", None, ge=2,
                               le=10_000_000)
    max_minutes: float | None = spec("wall-clock budget for fine-tuning, minutes (checked every batch)", None,
                                     ge=0.01, le=10_000)
    seed: int = spec("seed for the split and the shuffling", 0, ge=0, le=2**31 - 1)
    feature_weight: float = spec("with distill: weight of a feature term, the relative squared error between "
                                 "the student's and the teacher's inputs to the output layer (the penultimate "
                                 "features: hundreds of numbers per sample instead of a few logits; skipped when "
                                 "pruning changed their width)", 1.0, ge=0.0, le=100.0)
    freeze_bn: bool = spec("keep BatchNorm running statistics fixed while training (small CPU batches give "
                           "noisy statistics; pruning's reconstruction already matched them)", True)


@dataclass(frozen=True)
class PruneOptions:
    """How to prune: a channel ratio or a MAC goal, the importance criterion and what to leave alone."""

    ratio: float | None = spec("fraction of output channels removed from every prunable layer", None,
                               ge=0.0, le=MAX_RATIO)
    keep_macs: float | None = spec("goal instead of ratio: fraction of the model's MACs to keep (the ratio "
                                   "is searched)", None, ge=0.05, le=1.0)
    importance: str = spec("channel importance: weight magnitude, or Taylor (|w * dL/dw|) on calibration "
                           "data", "magnitude", choices=IMPORTANCES)
    ignore: tuple[str, ...] = spec("module names (as in model.named_modules()) left unpruned; the layer "
                                   "producing the outputs is always left alone", ())
    round_to: int = spec("remaining channel counts are multiples of this (SIMD-friendly)", 8, ge=1, le=256)
    iterative_steps: int = spec("prune in this many steps, re-estimating importance in between", 1,
                                ge=1, le=100)
    taylor_samples: int = spec("calibration samples used for Taylor importance", 64, ge=1, le=100_000)
    reconstruct: bool = spec("after pruning, refit every 1x1 convolution and linear layer by least squares "
                             "so it reproduces the unpruned layer's outputs on calibration data (cheap, "
                             "forward passes only; a layer keeps its weights when the refit is worse on "
                             "held-out positions)", True)
    reconstruct_samples: int = spec("calibration samples used for the reconstruction", 256, ge=1, le=100_000)
    finetune: FinetuneOptions | None = spec("recovery fine-tuning after pruning (None: none)", None)
    max_drop: float | None = spec("budget: accuracy points the shipped INT8 model may lose against the unpruned "
                                  "FP32 model, pruning and INT8 together (needs labelled --val)", None, ge=0)


def options_from_mapping(data: dict[str, Any], *, where: str) -> PruneOptions:
    """Validate a [prune] table (with an optional nested [prune.finetune] table) into PruneOptions."""
    data = dict(data)
    ft = data.pop("finetune", None)
    options = parse(PruneOptions, data, where=where, hint=BUILD_HINT)
    if isinstance(ft, str):
        ft = {"data": ft}
    if ft is not None:
        options = dataclasses.replace(options, finetune=parse(FinetuneOptions, ft, where=f"{where} finetune",
                                                              hint=BUILD_HINT))
    check_options(options)
    return options


def check_options(options: PruneOptions) -> None:
    """Exactly one of ratio / keep_macs must be given."""
    if (options.ratio is None) == (options.keep_macs is None):
        raise ConfigError("pruning needs exactly one of ratio and keep_macs",
                          hint="e.g. --prune 0.4 (remove 40 % of channels) or --prune-keep-macs 0.5")


@dataclass(frozen=True)
class BuildConfig:
    """One build. Budgets left as None come from the target profile."""

    model: str = spec("model source: torchvision:<arch>, package.module:factory, .pt2, TorchScript .pt, .onnx, "
                      "or a transformers text classifier folder")
    task: str | None = spec("what the model's outputs are: classify (one logits output), segment ((N, C, H, W) "
                            "class scores or an (N, 1, H, W) probability map), detect ((N, K, 4 + C): xyxy boxes "
                            "and class scores per candidate, or boxes (N, K, 4) and scores (N, K, C) outputs) or "
                            "generic (every output judged by SQNR against FP32); default: inferred from the "
                            "outputs (classify or generic)", None, choices=("classify", "detect", "segment", "generic"))
    target: str = spec("target profile name (edgepack targets list) or path to a .toml profile", "raspberry-pi-4")
    out: str = spec("output folder for the bundle (a .zip is written beside it)", "build/bundle")
    calib: str | None = spec("calibration data: image folder or .npz with x; text models: .txt, .jsonl or .csv",
                             None)
    val: str | None = spec("validation data: ImageFolder-style folder or .npz with x and optional y; text "
                           "models: .jsonl or .csv with text and optional label", None)
    tokenizer: str | None = spec("text models from a factory or an .onnx file: tokenizer.json, or a folder "
                                 "holding one (a transformers folder brings its own)", None)
    max_length: int | None = spec("text models: fixed sequence length, tokens (default: the tokenizer's, else 128; "
                                  "at most what the model's position embeddings hold)", None, ge=1, le=8192)
    weights: str | None = spec("state dict for torchvision/factory models (loaded with weights_only=True)", None)
    num_classes: int | None = spec("classifier size for torchvision models, and for factories that take "
                                   "num_classes (passed to them)", None, ge=1, le=100000)
    input_shape: tuple[int, ...] | None = spec("model input shape, e.g. [1, 3, 224, 224] (default: profile)", None,
                                               ge=1, le=8192)
    labels: str | None = spec("text file with one class name per line", None)
    labels_dir: str | None = spec("detect/segment validation labels: a folder of PNG index masks or YOLO .txt files "
                                  "named like the --val images, or a COCO .json (default: none; INT8 is then "
                                  "scored against the FP32 model's own predictions)", None)
    prob_threshold: float = spec("segment task: an (N, 1, H, W) probability map's foreground threshold, mask = "
                                 "p >= this (DBNet text detectors binarise at 0.3)", 0.5, ge=0, le=1)
    box_format: str = spec("detect task: how one output's candidates are laid out: xyxy (x1, y1, x2, y2, class "
                           "scores), cxcywh (cx, cy, w, h, class scores: YOLOv8 / YOLO11), yolov5 (cx, cy, w, h, "
                           "objectness, class scores: YOLOv5 / YOLOv7; score = objectness x class score); auto: "
                           "an (N, 4 + C, K) output with K >= 4 (4 + C) is cxcywh, one --labels names 5 classes "
                           "fewer than it is wide is yolov5, else xyxy", "auto",
                           choices=("auto", "xyxy", "cxcywh", "yolov5"))
    name: str | None = spec("bundle name (default: derived from the model)", None)
    calib_samples: int | None = spec("calibration samples (default: profile)", None, ge=1, le=100000)
    val_samples: int | None = spec("validation samples, seeded subset (default: all)", None, ge=1, le=1000000)
    calibration_method: str | None = spec("override the profile's calibration method", None, choices=CALIB_METHODS)
    per_channel: bool = spec("per-channel weight quantization", True)
    weight_rounding: str = spec("INT8 weights: 'nearest' (each weight to its nearest step, the quantizers' own) or "
                                "'gptq' (each Conv/Gemm layer's int8 weights chosen together to reproduce its "
                                "outputs on the calibration data; tens of seconds more; the accuracy search also "
                                "tries it)", "nearest", choices=("nearest", "gptq"))
    seed: int = spec("seed for every sampled subset", 0, ge=0, le=2**31 - 1)
    max_search_time: float = spec("accuracy-aware search time limit when INT8 misses the budget, s (0 = off)",
                                  300.0, ge=0, le=86400)
    latency_runs: int = spec("timed runs per model for p50/p90 (after warm-up)", 50, ge=3, le=100000)
    max_accuracy_drop: float | None = spec("override budget: accuracy drop, points", None, ge=0, le=100)
    min_agreement: float | None = spec("override budget: top-1 agreement (0-1)", None, ge=0, le=1)
    max_miou_drop: float | None = spec("override budget: segmentation mIoU drop FP32->INT8, points", None, ge=0,
                                       le=100)
    max_map_drop: float | None = spec("override budget: detection mAP@0.5 drop FP32->INT8, points", None, ge=0,
                                      le=100)
    max_latency_ms: float | None = spec("override budget: INT8 p50 latency, ms", None, ge=0, le=1e6)
    max_size_mb: float | None = spec("override budget: INT8 file size, MB", None, ge=0, le=1e6)
    min_output_sqnr_db: float | None = spec("override budget: SQNR of every INT8 output vs FP32, dB, for outputs no "
                                            "accuracy/agreement budget judges (all outputs when set; default 10)",
                                            None, ge=-100, le=200)
    estimate_device: bool = spec("estimate device latency from the profile's references (times them on the host "
                                 "once; cached)", False)
    emulate: bool | None = spec("the device stage (profiles with emulate = true: the ARM ones) runs the models on the "
                                "emulated device's CPU and runtime; unset: on unless EDGEPACK_EMULATE=0, and a device "
                                "not prepared only warns; true: required (not prepared: an error); false: off",
                                None)
    allow_float_ops: bool = spec("TFLite: keep ops without an INT8 kernel in float (reported) instead of failing",
                                 False)
    text_tflite_int8: str = spec("TFLite text models: 'auto' tries full-integer INT8 in a child process and falls "
                                 "back to dynamic-range (reported); 'dynamic-range' skips the attempt; "
                                 "'full-integer' fails the build when it cannot run", "auto",
                                 choices=("auto", "dynamic-range", "full-integer"))
    trust_model: bool = spec("allow model files that can run code on load (TorchScript, full pickles)", False)
    force: bool = spec("replace an existing output folder", False)
    preprocess: Preprocess = spec("image preprocessing", Preprocess())
    prune: PruneOptions | None = spec("structured pruning options (a [prune] table; None = no pruning)", None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PREPROCESS_KEYS = tuple(f.name for f in dataclasses.fields(Preprocess))
#: where a build setting's problem sends a person: its option, meaning and bounds are listed there
BUILD_HINT = ("see `edgepack build --help` for every setting (a --config key is the option's name with underscores, "
              "a list is written [1, 3, 224, 224] or \"1,3,224,224\") and the README for bounds")


def from_mapping(data: dict[str, Any], *, where: str, elsewhere: dict[str, str] | None = None) -> BuildConfig:
    """Validate a flat mapping (TOML file or CLI options); preprocessing keys sit at the top level. ``elsewhere``:
    {key: where its value came from instead of ``where``} (schema.parse), for the errors."""
    data = dict(data)
    pre = {k: data.pop(k) for k in list(data) if k in PREPROCESS_KEYS}
    if isinstance(data.get("preprocess"), dict):
        pre.update(data.pop("preprocess"))
    prune = data.pop("prune", None)
    config = schema.parse(BuildConfig, data, where=where, hint=BUILD_HINT, elsewhere=elsewhere)
    if prune is not None:
        if not isinstance(prune, dict):
            raise ConfigError(f"{where}: prune must be a table, e.g. [prune] ratio = 0.4", hint=BUILD_HINT)
        config = dataclasses.replace(config, prune=options_from_mapping(prune, where=f"{where} [prune]"))
    preprocess = schema.parse(Preprocess, pre, where=where, hint=BUILD_HINT, elsewhere=elsewhere)
    _check_preprocess(preprocess, where)
    return dataclasses.replace(config, preprocess=preprocess)


def _check_preprocess(pre: Preprocess, where: str) -> None:
    channels = 1 if pre.channel_order == "L" else 3
    if len(pre.mean) != channels or len(pre.std) != channels:
        grey = channels == 3 and len(pre.mean) == 1 and len(pre.std) == 1
        raise ConfigError(f"{where}: mean and std need {channels} values for channel_order {pre.channel_order}",
                          hint="for a grey (1-channel) model add --channel-order L" if grey else
                          "e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a --config file into a dict (no code is ever executed from it). utf-8-sig: a file Windows Notepad saved
    (with a byte-order mark) was "not valid TOML (Invalid statement (at line 1, column 1))"."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
