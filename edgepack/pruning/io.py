"""Writing and reading a pruned PyTorch model: a torch.export program (.pt2), or, when export fails, a
state dict (weights_only) plus a pickle-free description of the resized layers."""

from __future__ import annotations

import copy
import logging

from edgepack.errors import InputError

log = logging.getLogger(__name__)


def save_pruned(module, path, *, example_input) -> dict:
    """Write the pruned model for users who fine-tune it themselves; returns {"format", "files"}.

    First choice: a torch.export program at ``path`` (.pt2; load with torch.export.load(path).module()).
    If export fails: ``<path>.state.pt`` (tensors only, loads with weights_only=True) plus
    ``<path>.arch.json`` (each resized layer's type and channel attributes); rebuild with
    ``load_pruned(path, unpruned_module)``. Files are written beside the final name and renamed.
    """
    import os
    from pathlib import Path

    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix or '.pt2'}")  # torch wants .pt2
    try:
        args = example_input if isinstance(example_input, tuple) else (example_input,)  # text: token tensors
        program = torch.export.export(module.eval(), args)
        torch.export.save(program, str(tmp))
        os.replace(tmp, path)
        return {"format": "pt2", "files": [str(path)]}
    except Exception as exc:  # noqa: BLE001 - any export failure falls back to the state dict
        tmp.unlink(missing_ok=True)
        log.warning("torch.export failed (%s: %s); writing a state dict and architecture instead",
                    type(exc).__name__, str(exc)[:200])
    return _save_state(module, path)


def _save_state(module, path) -> dict:
    import json
    import os

    import torch

    from edgepack.util import write_bytes_atomic

    state, arch = path.with_suffix(".state.pt"), path.with_suffix(".arch.json")
    tmp = state.with_name(f".{state.name}.tmp-{os.getpid()}")
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp)
    os.replace(tmp, state)
    write_bytes_atomic(arch, json.dumps(architecture(module), indent=1, sort_keys=True).encode())
    return {"format": "state_dict", "files": [str(state), str(arch)]}


SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
               "normalized_shape", "num_channels", "num_groups")


def architecture(module) -> dict:
    """Pickle-free description of a (pruned) model: per module, its class and channel attributes."""
    layers = {}
    for name, m in module.named_modules():
        attrs = {a: getattr(m, a) for a in SHAPE_ATTRS if isinstance(getattr(m, a, None), (int, tuple))}
        if attrs:
            layers[name] = {"type": f"{type(m).__module__}.{type(m).__qualname__}", **attrs}
    return {"format": "edgepack-pruned-architecture/1", "root": type(module).__qualname__, "layers": layers}


def load_pruned(path, unpruned=None):
    """Load what save_pruned wrote: a .pt2 program's module, or ``unpruned`` resized and loaded."""
    import json
    from pathlib import Path

    import torch

    path = Path(path)
    if path.exists():
        return torch.export.load(str(path)).module()
    if unpruned is None:
        raise InputError(f"{path} is not there; rebuilding from {path.with_suffix('.state.pt')} needs the "
                         "unpruned model", hint="pass the original (unpruned) model to load_pruned")
    arch = json.loads(path.with_suffix(".arch.json").read_text())
    state = torch.load(path.with_suffix(".state.pt"), map_location="cpu", weights_only=True)
    model = copy.deepcopy(unpruned)
    modules = dict(model.named_modules())
    for name, attrs in arch["layers"].items():
        for key, value in attrs.items():
            if key != "type":
                setattr(modules[name], key, tuple(value) if isinstance(value, list) else value)
    for key, tensor in state.items():  # resize parameters and buffers to the saved shapes
        owner, _, leaf = key.rpartition(".")
        holder = modules[owner]
        if leaf in holder._parameters and holder._parameters[leaf] is not None:
            holder._parameters[leaf] = torch.nn.Parameter(torch.empty_like(tensor))
        elif leaf in holder._buffers and holder._buffers[leaf] is not None:
            holder._buffers[leaf] = torch.empty_like(tensor)
    model.load_state_dict(state)
    return model.eval()
