"""Load a model from where users keep it, offline and without running untrusted code.

Sources:
    torchvision:<arch>        architecture from torchvision, weights from --weights (state dict)
    package.module:factory    an importable callable returning an nn.Module, optional --weights
    model.pt2                 a torch.export program
    model.pt / .ts            TorchScript (can run code: needs --trust-model)
    model.onnx                ONNX; the torch stages are skipped
    path/to/hf_folder/        a transformers text classifier folder (config.json, model.safetensors,
                              tokenizer.json), or image classifier folder (config.json, model.safetensors,
                              preprocessor_config.json), offline, no remote code

A text model (an HF folder, or a factory given with --tokenizer) carries a `TextInfo`: its tokenizer.json and
the settings the device must reproduce. Its inputs are token arrays named by `TextInfo.input_names`.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edgepack.errors import InputError
from edgepack.guards import usercode
from edgepack.util import require, sha256_file

log = logging.getLogger(__name__)
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # package.module:function


@dataclass
class TextInfo:
    """What a text model needs besides its weights: the tokenizer.json and its settings (text.tokenizer_settings,
    with ``model_input_names`` narrowed to what the model's forward takes), and class names when the model has
    them (an HF config's id2label)."""

    tokenizer: Path
    settings: dict = field(default_factory=dict)
    labels: list[str] | None = None
    multi_label: bool = False   # an HF config's problem_type multi_label_classification: one sigmoid per class

    @property
    def input_names(self) -> list[str]:
        return list(self.settings["model_input_names"])

    @property
    def max_length(self) -> int:
        return int(self.settings["max_length"])


@dataclass
class LoadedModel:
    """A model ready for export: a torch module in eval mode, or an ONNX file."""

    spec: str
    kind: str                     # "torch" or "onnx"
    name: str
    module: Any = None            # torch.nn.Module when kind == "torch"
    onnx_path: Path | None = None
    sha256: str | None = None     # of the model file, or of the weights file
    weights_sha256: str | None = None
    text: TextInfo | None = None  # set for text models: their inputs are token arrays, not an image
    input_shape: tuple[int, ...] | None = None   # a .pt2 program's own example input shape (one tensor input)
    labels: list[str] | None = None   # class names the model carries (an image HF folder's id2label)
    preprocess: dict | None = None    # the image preprocessing the model declares (preprocessor_config.json)
    preprocess_from: str = "preprocessor_config.json"   # where that preprocessing was read, for messages


def load(spec: str, *, weights: str | None = None, num_classes: int | None = None,
         trust_model: bool = False, tokenizer: str | None = None, max_length: int | None = None) -> LoadedModel:
    """Load the model named by ``spec``; raise InputError with a hint for anything a person can fix.

    ``tokenizer`` (a tokenizer.json or a folder holding one) makes a factory model a text model;
    ``max_length`` (tokens) fixes a text model's sequence length.
    """
    loaded = _load(spec, weights, num_classes, trust_model, max_length)
    if tokenizer is not None:
        _attach_tokenizer(loaded, tokenizer, max_length)
    elif max_length is not None and loaded.text is None:
        raise InputError("--max-length applies to text models only",
                         hint="pass --tokenizer tokenizer.json with a factory text model, or a transformers folder")
    return loaded


def _load(spec: str, weights: str | None, num_classes: int | None, trust_model: bool,
          max_length: int | None) -> LoadedModel:
    if spec.startswith("torchvision:"):
        return _torchvision(spec, weights, num_classes)
    _not_a_factory_spelling(spec)
    if num_classes is not None and not FACTORY.match(spec):  # it was ignored: the file's head shipped as it was
        raise InputError(f"--num-classes applies to torchvision:<arch> and package.module:factory models; "
                         f"{spec}'s classifier size is fixed in it",
                         hint="drop --num-classes, or export the model with the head you want")
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".pt2", ".pt", ".pth", ".ts", ".torchscript", ".jit"):
        _require_file(path)
        if suffix == ".onnx":
            return _onnx(path)
        if suffix == ".pt2":
            return _exported_program(path)
        return _torchscript(path, trust_model)
    if path.is_dir():
        return _hf_folder(path, max_length)
    if FACTORY.match(spec):
        return _factory(spec, weights, num_classes)
    raise InputError(f"cannot tell what kind of model '{spec}' is",
                     hint="use torchvision:<arch>, package.module:factory, a .pt2/.pt/.onnx file path, "
                          "or a transformers model folder")


def _hf_folder(folder: Path, max_length: int | None) -> LoadedModel:
    """A transformers text classifier folder (see edgepack.inputs.text.load_hf_folder: safetensors, no remote code)."""
    from edgepack.inputs import text

    if not (folder / "config.json").is_file():
        raise InputError(f"{folder} is a folder without config.json: not a transformers model",
                         hint="pass a folder written by model.save_pretrained(), or a model file")
    if not (folder / "tokenizer.json").is_file() and _vision_config(folder):
        from edgepack.inputs import hf_image

        if max_length is not None:
            raise InputError("--max-length applies to text models only", hint=f"{folder} is an image classifier")
        module, shape, labels, pre = hf_image.load_folder(folder)
        return LoadedModel(spec=str(folder), kind="torch", name=folder.resolve().name, module=module,
                           sha256=sha256_file(folder / "model.safetensors"), input_shape=shape, labels=labels,
                           preprocess=pre)
    module, tokenizer, settings = text.load_hf_folder(folder, max_length)
    weights = folder / "model.safetensors"
    return LoadedModel(spec=str(folder), kind="torch", name=folder.resolve().name, module=module,
                       sha256=sha256_file(weights), text=TextInfo(tokenizer, settings, _id2label(module),
                                                                  multi_label=_multi_label(module)))


def _multi_label(module: Any) -> bool:
    """Whether the HF classifier scores each class on its own (sigmoid), not one class among all (softmax)."""
    config = getattr(module.model, "config", None)
    return getattr(config, "problem_type", None) == "multi_label_classification"


def _transformers_model(module: Any) -> Any:
    """A factory's module wrapped as load_hf_folder wraps one (``.model``) when it is itself a transformers
    classifier (its config's id2label and problem_type are then its own head's), else None: a module of the user's
    own that holds an HF model may have put another head on it."""
    is_hf = type(module).__module__.startswith("transformers.") and hasattr(module, "config")
    return SimpleNamespace(model=module) if is_hf else None


def _vision_config(folder: Path) -> bool:
    """Whether an HF folder holds an image model: a preprocessor_config.json, or a config with image_size and
    num_channels (read as JSON: nothing imported)."""
    import json

    if (folder / "preprocessor_config.json").is_file():
        return True
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "image_size" in config and "num_channels" in config


def _id2label(module: Any) -> list[str] | None:
    """Class names from the HF config, unless they are the LABEL_0, LABEL_1 ... placeholders."""
    id2label = getattr(getattr(module.model, "config", None), "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)]
    return None if all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names


def _attach_tokenizer(loaded: LoadedModel, tokenizer: str, max_length: int | None) -> None:
    """Make a factory's module (its forward takes the tokenizer's inputs by name) or an ONNX file (its inputs are
    named as the tokenizer names them) a text model."""
    from edgepack.inputs import text

    require(("tokenizers",), extra="text", what="--tokenizer (text models)")
    if loaded.text is not None:
        raise InputError(f"{loaded.spec} carries its own tokenizer.json; --tokenizer is for factory models",
                         hint="drop --tokenizer")
    onnx_file = loaded.kind == "onnx"
    if not onnx_file and not (FACTORY.match(loaded.spec) or loaded.spec.lower().endswith(".pt2")):
        raise InputError("--tokenizer applies to package.module:factory, .pt2 and .onnx text models only",
                         hint="image models take no tokenizer; transformers folders bring their own")
    path = Path(tokenizer)
    path = path / "tokenizer.json" if path.is_dir() else path
    names, fixed = _onnx_token_inputs(loaded, max_length) if onnx_file else (None, None)
    settings = text.tokenizer_settings(path, max_length or fixed)
    settings["model_input_names"] = names or text.forward_input_names(loaded.module, settings["model_input_names"])
    if not settings["model_input_names"]:
        raise InputError(f"the forward of {loaded.spec} takes none of the tokenizer's inputs "
                         f"({', '.join(text.INPUT_ORDER)})",
                         hint="define forward(input_ids, attention_mask, token_type_ids=None)")
    hf = None if onnx_file else _transformers_model(loaded.module)   # a factory returning an HF classifier
    loaded.text = TextInfo(path, settings, _id2label(hf) if hf else None, multi_label=bool(hf and _multi_label(hf)))


def _onnx_token_inputs(loaded: LoadedModel, max_length: int | None) -> tuple[list[str], int | None]:
    """(input names in text.INPUT_ORDER, the sequence length the file fixes or None) of an ONNX text model: every
    input must be a (batch, sequence) int64 array the tokenizer gives, of one length; its dynamic axes are pinned
    to (1, --max-length) by the export stage."""
    import onnx

    from edgepack.inputs import text

    graph = onnx.load(str(loaded.onnx_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    inputs = [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
               "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]}
              for v in graph.input if v.name not in weights]
    name = loaded.onnx_path.name
    odd = [f"{i['name']} {i['dtype']} {list(i['shape'])}" for i in inputs
           if i["name"] not in text.INPUT_ORDER or i["dtype"] != "int64" or len(i["shape"]) != 2]
    if odd or not inputs:
        raise InputError(f"{name} takes inputs the tokenizer does not give: {', '.join(odd) or 'none'}",
                         hint=f"export it with (batch, sequence) int64 inputs named {', '.join(text.INPUT_ORDER)} "
                              "(the ones it uses)")
    fixed = sorted({i["shape"][1] for i in inputs if isinstance(i["shape"][1], int) and i["shape"][1] > 0})
    if len(fixed) > 1 or (fixed and max_length and max_length != fixed[0]):
        raise InputError(f"{name} fixes its sequence length at {' and '.join(map(str, fixed))} tokens"
                         + (f", not --max-length {max_length}" if max_length and len(fixed) == 1 else ""),
                         hint="drop --max-length, or export the model with a dynamic sequence axis")
    return [n for n in text.INPUT_ORDER if n in {i["name"] for i in inputs}], (fixed[0] if fixed else None)


def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"model file not found: {path}", hint="check the path (relative to the current folder)")
    if not path.is_file():
        raise InputError(f"model path is not a file: {path}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise InputError(f"cannot read model file {path}: {exc.strerror}") from None
    if not head:
        raise InputError(f"model file is empty: {path}")


def _onnx(path: Path) -> LoadedModel:
    import onnx

    from edgepack.inputs import model_checks

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ... for corrupt files
        raise InputError(f"{path} is not a valid ONNX model ({type(exc).__name__}: {str(exc)[:200]})",
                         hint="re-export the model; a truncated download is the usual cause") from None
    model_checks.check_onnx(model, path)  # too new for this onnxruntime, custom ops, no outputs: said plainly
    try:  # by path: weights saved as external data beside the file (model.onnx.data) are found from its folder
        onnx.checker.check_model(str(path))
    except Exception as exc:  # ValidationError, ...
        external = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
        missing = [f for f in external if not (path.parent / f).is_file()]
        raise InputError(f"{path} is not a valid ONNX model ({type(exc).__name__}: {str(exc)[:200]})",
                         hint=f"its weights are saved beside it as external data: put {', '.join(missing)} in "
                              f"{path.parent}" if missing else
                              "re-export the model; a truncated download is the usual cause") from None
    model_checks.check_session(path)
    return LoadedModel(spec=str(path), kind="onnx", name=path.stem, onnx_path=path, sha256=sha256_file(path),
                       weights_sha256=_external_data_sha256(model, path))


def _external_data_sha256(model: Any, path: Path) -> str | None:
    """sha256 of the weights an ONNX file keeps beside it (external data; the digests of each file, in name order,
    hashed when there are several), so the manifest's digests cover them; None when it keeps none."""
    import hashlib

    files = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    digests = [sha256_file(path.parent / f) for f in files]
    return None if not digests else digests[0] if len(digests) == 1 else \
        hashlib.sha256("".join(digests).encode()).hexdigest()


def _torch_zip_check(path: Path, what: str) -> None:
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a {what} (not a zip archive; truncated or another format)",
                         hint="re-save the model; for a plain state dict use an architecture with --weights")


def _exported_program(path: Path) -> LoadedModel:
    import torch

    _torch_zip_check(path, "torch.export program (.pt2)")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise InputError(f"cannot load torch.export program {path} ({type(exc).__name__}: {str(exc)[:200]})",
                         hint="save it with torch.export.save(torch.export.export(model, args), path)") from None
    try:
        module = program.module()
    except RuntimeError as exc:   # torch rebuilds the program as an fx GraphModule and lints it
        raise InputError(f"torch.export cannot rebuild the program in {path} as a module "
                         f"({str(exc)[:200]})",
                         hint="a submodule named like a GraphModule attribute ('meta', 'graph', 'code') is one "
                              "known cause: rename it, or build from the model's factory (package.module:function) "
                              "instead of a .pt2") from None
    return LoadedModel(spec=str(path), kind="torch", name=path.stem, module=module,
                       sha256=sha256_file(path), input_shape=_example_shape(program))


def _example_shape(program) -> tuple[int, ...] | None:
    """The shape of a torch.export program's example input when it took one tensor (what it was captured at)."""
    import torch

    try:
        args, kwargs = program.example_inputs
    except (AttributeError, TypeError, ValueError):
        return None
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    return tuple(int(d) for d in args[0].shape)


def _torchscript(path: Path, trust_model: bool) -> LoadedModel:
    import torch

    _torch_zip_check(path, "TorchScript archive")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if not any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise InputError(f"{path} looks like a pickled state dict or object, not a TorchScript model",
                         hint="pass the architecture (torchvision:<arch> or package.module:factory) "
                              "and give this file with --weights")
    if not trust_model:
        raise InputError(f"{path} is TorchScript, which can run code when loaded",
                         hint="pass --trust-model if you trust where the file came from, or export a .pt2 program")
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise InputError(f"cannot load TorchScript model {path} ({type(exc).__name__}: {str(exc)[:200]})") from None
    return LoadedModel(spec=str(path), kind="torch", name=path.stem, module=module, sha256=sha256_file(path))


def _torchvision(spec: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    import torch
    import torchvision

    arch = spec.split(":", 1)[1]
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        from edgepack.errors import did_you_mean

        _not_a_classifier(arch)
        suggestion = did_you_mean(arch, names)
        raise InputError(f"unknown torchvision architecture '{arch}'" + (f" ({suggestion})" if suggestion else ""),
                         hint="see torchvision.models.list_models(); classification models only")
    kwargs = {"num_classes": num_classes} if num_classes else {}
    # seeded (without touching the caller's generator): without --weights the random weights are the model, and
    # an unseeded init gave every build of the same command another model (mnasnet0_5: agreement 1.0, then 0.81)
    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception_v3: their default init will change
        torch.manual_seed(0)
        module = torchvision.models.get_model(arch, weights=None, **kwargs)
    loaded = LoadedModel(spec=spec, kind="torch", name=arch, module=module)
    if weights:
        loaded.weights_sha256 = load_weights(module, weights)
    else:
        log.warning("no --weights given: %s has random weights", arch)
    module.eval()
    return loaded


def _not_a_classifier(arch: str) -> None:
    """An InputError naming the kind of a torchvision model that is not a classifier (a segmentation model got
    "did you mean 'mobilenet_v3_large'?"), with the factory that builds it without downloading weights."""
    import torchvision

    for kind in ("segmentation", "detection", "video", "optical_flow", "quantization"):
        if arch in torchvision.models.list_models(module=getattr(torchvision.models, kind)):
            backbone = ", weights_backbone=None" if kind in ("segmentation", "detection") else ""
            if kind == "detection" and "rcnn" in arch:  # refused by the factory path too (RoIAlign)
                raise InputError(f"'{arch}' is a torchvision two-stage detector, which edgepack cannot build: it "
                                 "crops a varying number of proposed regions at run time (RoIAlign), which no "
                                 "fixed-shape INT8 graph holds",
                                 hint="use a single-stage torchvision detector (ssdlite320_mobilenet_v3_large, "
                                      "ssd300_vgg16, retinanet_resnet50_fpn(_v2), fcos_resnet50_fpn) from a factory, "
                                      "or export your own (N, K, 4) boxes and (N, K, C) scores")
            after = ("; torchvision's SSD, SSDLite, RetinaNet and FCOS build as they are (no wrapper; the task "
                     "is detect)" if kind == "detection" else "")
            raise InputError(f"'{arch}' is a torchvision {kind} model; torchvision:<arch> takes classification "
                             "models only",
                             hint=f"wrap it in a factory, e.g. def model(): return torchvision.models.{kind}.{arch}"
                                  f"(weights=None{backbone}, num_classes=N).eval(), and pass package.module:model "
                                  f"with --task and --weights{after}")


def _not_a_factory_spelling(spec: str) -> None:
    """A factory named with its arguments (``mod:make(num_classes=3)``) or by its file (``mod.py:make``): said so,
    not "cannot tell what kind of model"."""
    module, _, func = spec.partition(":")
    if not func or not re.match(r"^[A-Za-z_][\w./]*$", module):
        return
    if re.match(r"^[A-Za-z_]\w*\(.*\)$", func):
        raise InputError(f"'{spec}': a factory is named without arguments; edgepack calls it with none",
                         hint=f"use {module}:{func.split('(')[0]} (--num-classes N passes num_classes=N), or write a "
                              "factory of no arguments that calls it with yours")
    if module.endswith(".py") and re.match(r"^[A-Za-z_]\w*$", func):
        dotted = module[:-3].replace("/", ".")
        raise InputError(f"'{spec}' names a file; a factory is named by its module, package.module:function",
                         hint=f"use {dotted}:{func}, from the folder that holds {module.split('/')[0]}")


def _factory(spec: str, weights: str | None, num_classes: int | None = None) -> LoadedModel:
    import functools

    import torch

    module_name, func_name = spec.split(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`: factories in the current project import
    try:
        module = usercode.call_factory(spec, lambda: importlib.import_module(module_name),
                                       " (importing its module)", passthrough=(ImportError,))
        factory = getattr(module, func_name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot import factory '{spec}': {exc}",
                         hint="run from the folder that contains the package, or install it") from None
    if not callable(factory):
        raise InputError(f"factory '{spec}' is a {type(factory).__name__}, not a function returning a model")
    if num_classes is not None:
        _check_takes_num_classes(spec, factory)
        factory = functools.partial(factory, num_classes=num_classes)
    model = usercode.call_factory(spec, factory)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"factory '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    loaded = LoadedModel(spec=spec, kind="torch", name=factory_name(module_name, func_name), module=model)
    if weights:
        loaded.weights_sha256 = load_weights(model, weights)
    model.eval()
    return loaded


def _check_takes_num_classes(spec: str, factory: Any) -> None:
    """--num-classes for a factory without a ``num_classes`` argument (by name, or **kwargs) is refused: it was
    ignored, and a 4-class head shipped where 3 were asked."""
    import inspect

    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin or C callable: the call says
    if any(p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    raise InputError(f"--num-classes: factory '{spec}' takes no num_classes argument",
                     hint="add a num_classes parameter to the factory, or drop --num-classes")


#: factory names that say nothing about the model: the bundle is named after the module instead
GENERIC_FACTORIES = frozenset({"create", "create_model", "build", "build_model", "make", "make_model", "model",
                               "get_model", "load", "load_model", "factory", "main"})


def factory_name(module_name: str, func_name: str) -> str:
    """The bundle's default name: the factory's, unless it is generic ("create for raspberry-pi-4" said nothing);
    then the module's last part, or the package's when the module is examples.x.model-like."""
    if func_name not in GENERIC_FACTORIES:
        return func_name
    parts = module_name.split(".")
    return parts[-2] if len(parts) > 1 and parts[-1] in GENERIC_FACTORIES else parts[-1]


def load_weights(module: Any, path_str: str) -> str:
    """Load a state dict into ``module`` safely (weights_only / safetensors); return the file's sha256."""
    import torch

    path = Path(path_str)
    _require_file(path)
    state = _read_state_dict(path)
    for key in CHECKPOINT_KEYS:  # a training checkpoint: {"epoch": ..., "model_state_dict": {...}, ...}
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a state dict of tensors",
                         hint="save weights with torch.save(model.state_dict(), path)")
    state = _unwrapped(state, set(module.state_dict()))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise InputError(f"weights in {path} do not fit the architecture: {' '.join(first[:3])[:300]}",
                         hint="check the architecture and --num-classes") from None
    return sha256_file(path)


#: where training scripts put the weights inside a checkpoint dict
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
#: key prefixes wrappers add: DataParallel / DistributedDataParallel, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrapped(state: dict, expected: set[str]) -> dict:
    """``state`` with a wrapper's key prefix removed when every key carries it and the bare names are the
    model's (nn.DataParallel saves ``module.conv1.weight`` for ``conv1.weight``)."""
    for _ in WRAPPER_PREFIXES:
        if set(state) == expected:
            return state
        prefix = next((p for p in WRAPPER_PREFIXES if state and all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return state
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _read_state_dict(path: Path) -> Any:
    import pickle

    import torch

    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise InputError("safetensors is not installed", hint="pip install safetensors") from None
        try:
            return load_file(str(path))
        except Exception as exc:
            raise InputError(f"{path} is not a valid safetensors file ({str(exc)[:200]})") from None
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save: a zip archive, or a pickle
        raise InputError(f"{path} is not a PyTorch weights file (torch.save writes a zip archive or a pickle)",
                         hint="pass the file torch.save(model.state_dict(), path) wrote, or a .safetensors file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path} holds pickled objects, not just weights: refused ({str(exc).splitlines()[0][:160]})",
                         hint="save model.state_dict() instead of the model object") from None
    except Exception as exc:
        raise InputError(f"cannot read weights {path} ({type(exc).__name__}: {str(exc)[:200]})",
                         hint="the file may be truncated or not a torch.save file") from None
