"""Least-squares reconstruction after structured pruning: refit the pruned model's 1x1 convolutions and
linear layers, front to back, so each reproduces the unpruned layer's output on the kept channels.

Used by edgepack.pruning.prune_model when calibration data is given (PruneOptions.reconstruct).
"""

from __future__ import annotations

import logging

from edgepack.pruning.args import call, count, take, to_torch
from edgepack.util import ProgressFn, no_progress

log = logging.getLogger(__name__)


def out_size(m) -> int:
    """Output channels (conv) or features (linear) of a weight layer."""
    return m.out_channels if hasattr(m, "out_channels") else m.out_features


def in_size(m) -> int:
    """Input channels (conv) or features (linear) of a weight layer."""
    return m.in_channels if hasattr(m, "in_channels") else m.in_features


RECON_RIDGE = 1e-3          # ridge term, relative to the mean diagonal of X^T X
RECON_OVERDETERMINED = 16   # sampled positions per input channel (at least RECON_MIN_POSITIONS)
RECON_MIN_POSITIONS = 4096
RECON_HELD_OUT = 0.2        # fraction of the positions that judges whether a refit is kept
RECON_MEMORY = 2e9          # bytes of activations one forward pass may hold (caps the sample count)


def _reconstructable(m) -> bool:
    """Linear layers and 1x1, stride-1, ungrouped convolutions: a per-position matrix product."""
    from torch import nn

    if isinstance(m, nn.Linear):
        return True
    return (isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1 and not getattr(m, "transposed", False)
            and all(k == 1 for k in m.kernel_size) and all(s == 1 for s in m.stride))


def _positions_view(t, is_linear: bool):
    """(P, C) view of a layer's input or output: channels last, every position a row."""
    if is_linear:
        return t.reshape(-1, t.shape[-1])
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def reconstruct(model, teacher, x, kept: dict, progress: ProgressFn = no_progress) -> dict:
    """Refit the pruned ``model``'s 1x1 convolutions and linear layers, front to back, by ridge least
    squares so each reproduces the unpruned ``teacher`` layer's output (on its kept output channels)
    from the inputs the pruned model really feeds it.

    This is the layer-wise reconstruction of ThiNet / He et al. 2017, and it corrects the error built
    up by the layers before too. It needs forward passes only: a teacher pass collects the targets at
    seeded sample positions, then one pruned-model pass refits each layer just before it runs. A refit
    is kept only when it lowers the error on held-out positions. ``x``: (N, ...) float32 inputs.
    Returns {"samples", "layers_refit", "layers_kept", "error_before", "error_after"} (relative
    squared errors summed over the layers).
    """
    import numpy as np
    import torch
    from torch import nn

    teacher = teacher.eval()
    model.eval()
    t_mods = dict(teacher.named_modules())
    layers = {n: m for n, m in model.named_modules()
              if _reconstructable(m) and n in t_mods and type(t_mods[n]) is type(m)}
    if not layers:
        return {"samples": 0, "layers_refit": 0, "layers_kept": 0, "error_before": 0.0, "error_after": 0.0}
    xs = to_torch(x)
    xs = take(xs, 0, _recon_samples(teacher, xs))
    gen = np.random.default_rng(0)
    targets: dict = {}

    def grab(name, m):
        def hook(mod, inp, out):
            y = _positions_view(out.detach(), isinstance(mod, nn.Linear))
            total = len(y)
            n_in = in_size(layers[name])
            count = min(len(y), max(RECON_MIN_POSITIONS, RECON_OVERDETERMINED * n_in))
            pos = torch.from_numpy(np.sort(gen.choice(len(y), size=count, replace=False)))
            cols = kept.get(name)
            y = y[pos] if cols is None else y[pos][:, torch.tensor(cols)]
            targets[name] = (pos, y.double(), total)
        return m.register_forward_hook(hook)

    _forward_with_hooks(teacher, xs, [grab(n, t_mods[n]) for n in layers])
    stats = {"samples": count(xs), "layers_refit": 0, "layers_kept": 0, "error_before": 0.0, "error_after": 0.0}

    def refit(name):
        def pre_hook(mod, inp):
            done = stats["layers_refit"] + stats["layers_kept"]
            progress("reconstructing pruned layers", done, len(layers))
            if name not in targets:
                return
            pos, y, total = targets.pop(name)
            xin = _positions_view(inp[0].detach(), isinstance(mod, nn.Linear))
            if len(xin) != total or y.shape[1] != out_size(mod):
                return
            _refit_layer(mod, xin[pos].double(), y, stats)
        return layers[name].register_forward_pre_hook(pre_hook)

    _forward_with_hooks(model, xs, [refit(n) for n in layers])
    stats["error_before"] = round(stats["error_before"], 4)
    stats["error_after"] = round(stats["error_after"], 4)
    log.info("reconstruction: %d layers refit, %d kept, error %.4f -> %.4f", stats["layers_refit"],
             stats["layers_kept"], stats["error_before"], stats["error_after"])
    return stats


def _forward_with_hooks(model, x, hooks: list) -> None:
    """One no-grad forward pass of ``model`` on ``x`` with ``hooks`` registered, removed afterwards."""
    import torch

    try:
        with torch.no_grad():
            call(model, x)
    finally:
        for h in hooks:
            h.remove()


def _recon_samples(teacher, xs) -> int:
    """How many samples one forward pass can take within RECON_MEMORY (largest activation x 8)."""
    import torch

    biggest = [0]
    hooks = [m.register_forward_hook(lambda mod, i, o: biggest.__setitem__(0, max(
        biggest[0], o.numel() if isinstance(o, torch.Tensor) else 0))) for m in teacher.modules()]
    try:
        with torch.no_grad():
            call(teacher, take(xs, 0, 1))
    finally:
        for h in hooks:
            h.remove()
    return max(1, min(count(xs), int(RECON_MEMORY // max(1, biggest[0] * 4 * 8))))


def _refit_layer(mod, x, y, stats: dict) -> None:
    """Ridge fit of ``mod``'s weight (and bias) to map x (P, in) to y (P, out); applied only when it
    beats the current weights on the held-out positions."""
    import torch

    bias = getattr(mod, "bias", None)
    if bias is not None:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    current = mod.weight.detach().reshape(mod.weight.shape[0], -1).double().T
    if bias is not None:
        current = torch.cat([current, bias.detach().double()[None]], 0)
    n_held = max(1, int(len(x) * RECON_HELD_OUT)) if len(x) > 10 else 0
    fit_x, fit_y = x[n_held:], y[n_held:]
    gram = fit_x.T @ fit_x
    ridge = RECON_RIDGE * float(gram.diagonal().mean()) + 1e-12
    try:
        w = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype), fit_x.T @ fit_y)
    except RuntimeError:  # singular: leave the layer alone
        stats["layers_kept"] += 1
        return
    held_x, held_y = (x[:n_held], y[:n_held]) if n_held else (x, y)
    scale = float((held_y ** 2).sum()) + 1e-12
    err_old = float(((held_x @ current - held_y) ** 2).sum()) / scale
    err_new = float(((held_x @ w - held_y) ** 2).sum()) / scale
    stats["error_before"] += err_old
    if not err_new < err_old:
        stats["layers_kept"] += 1
        stats["error_after"] += err_old
        return
    stats["layers_refit"] += 1
    stats["error_after"] += err_new
    weight = w[:mod.weight[0].numel()].T.reshape(mod.weight.shape)
    mod.weight.data.copy_(weight.to(mod.weight.dtype))
    if bias is not None:
        bias.data.copy_(w[-1].to(bias.dtype))
