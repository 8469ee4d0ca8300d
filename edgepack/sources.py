"""Load a model from where users keep it, offline and without running untrusted code.

Sources:
    torchvision:<arch>        architecture from torchvision, weights from --weights (state dict)
    package.module:factory    an importable callable returning an nn.Module, optional --weights
    model.pt2                 a torch.export program
    model.pt / .ts            TorchScript (can run code: needs --trust-model)
    model.onnx                ONNX; the torch stages are skipped
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .util import sha256_file

log = logging.getLogger(__name__)
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


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


def load(spec: str, *, weights: str | None = None, num_classes: int | None = None,
         trust_model: bool = False) -> LoadedModel:
    """Load the model named by ``spec``; raise InputError with a hint for anything a person can fix."""
    if spec.startswith("torchvision:"):
        return _torchvision(spec, weights, num_classes)
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".pt2", ".pt", ".pth", ".ts", ".torchscript", ".jit"):
        _require_file(path)
        if suffix == ".onnx":
            return _onnx(path)
        if suffix == ".pt2":
            return _exported_program(path)
        return _torchscript(path, trust_model)
    if _FACTORY.match(spec):
        return _factory(spec, weights)
    raise InputError(f"cannot tell what kind of model '{spec}' is",
                     hint="use torchvision:<arch>, package.module:factory, or a .pt2/.pt/.onnx file path")


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

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ... for corrupt files
        raise InputError(f"{path} is not a valid ONNX model ({type(exc).__name__}: {str(exc)[:200]})",
                         hint="re-export the model; a truncated download is the usual cause") from None
    return LoadedModel(spec=str(path), kind="onnx", name=path.stem, onnx_path=path, sha256=sha256_file(path))


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
    return LoadedModel(spec=str(path), kind="torch", name=path.stem, module=program.module(),
                       sha256=sha256_file(path))


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
    import torchvision

    arch = spec.split(":", 1)[1]
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        from .errors import did_you_mean

        suggestion = did_you_mean(arch, names)
        raise InputError(f"unknown torchvision architecture '{arch}'" + (f" ({suggestion})" if suggestion else ""),
                         hint="see torchvision.models.list_models(); classification models only")
    kwargs = {"num_classes": num_classes} if num_classes else {}
    module = torchvision.models.get_model(arch, weights=None, **kwargs)
    loaded = LoadedModel(spec=spec, kind="torch", name=arch, module=module)
    if weights:
        loaded.weights_sha256 = load_weights(module, weights)
    else:
        log.warning("no --weights given: %s has random weights", arch)
    module.eval()
    return loaded


def _factory(spec: str, weights: str | None) -> LoadedModel:
    import torch

    module_name, func_name = spec.split(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`: factories in the current project import
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot import factory '{spec}': {exc}",
                         hint="run from the folder that contains the package, or install it") from None
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"factory '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    loaded = LoadedModel(spec=spec, kind="torch", name=func_name if func_name != "create_model" else
                         module_name.split(".")[-2 if "." in module_name else -1], module=model)
    if weights:
        loaded.weights_sha256 = load_weights(model, weights)
    model.eval()
    return loaded


def load_weights(module: Any, path_str: str) -> str:
    """Load a state dict into ``module`` safely (weights_only / safetensors); return the file's sha256."""
    import torch

    path = Path(path_str)
    _require_file(path)
    state = _read_state_dict(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a state dict of tensors",
                         hint="save weights with torch.save(model.state_dict(), path)")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise InputError(f"weights in {path} do not fit the architecture: {' '.join(first[:3])[:300]}",
                         hint="check the architecture and --num-classes") from None
    return sha256_file(path)


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
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path} holds pickled objects, not just weights: refused ({str(exc).splitlines()[0][:160]})",
                         hint="save model.state_dict() instead of the model object") from None
    except Exception as exc:
        raise InputError(f"cannot read weights {path} ({type(exc).__name__}: {str(exc)[:200]})",
                         hint="the file may be truncated or not a torch.save file") from None
