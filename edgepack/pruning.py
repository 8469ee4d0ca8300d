"""Structured channel pruning with Torch-Pruning's DepGraph, so the exported graph really shrinks.

Whole output channels are removed from convolutions and linear layers together with every layer
that depends on them (residual adds, depthwise/grouped convolutions, concatenations, squeeze-
excitation blocks), found by tracing the model. Remaining channel counts are multiples of
``round_to``; the layer producing the outputs (the classifier head) is never pruned.

MACs are counted twice: by Torch-Pruning's module hooks (``count_ops_and_params``, conv/linear
layers only) and independently by PyTorch's ``FlopCounterMode`` at the aten level (FLOPs / 2).
Both are reported; a gap over 2 % means some layer escaped one of the counters.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, InputError, StageError, did_you_mean
from .finetune import FinetuneOptions
from .schema import parse, spec
from .util import ProgressFn, no_progress

log = logging.getLogger(__name__)
IMPORTANCES = ("magnitude", "taylor")
MAC_TOLERANCE = 0.02        # relative gap allowed between the two MAC counts
SEARCH_STEPS = 7            # bisection steps on the ratio for a keep_macs goal (ratio resolution ~0.007)
MAX_RATIO = 0.9
TAYLOR_BATCH = 16


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


def options_from_mapping(data: dict[str, Any], *, where: str) -> PruneOptions:
    """Validate a [prune] table (with an optional nested [prune.finetune] table) into PruneOptions."""
    data = dict(data)
    ft = data.pop("finetune", None)
    options = parse(PruneOptions, data, where=where)
    if isinstance(ft, str):
        ft = {"data": ft}
    if ft is not None:
        options = dataclasses.replace(options, finetune=parse(FinetuneOptions, ft, where=f"{where} finetune"))
    check_options(options)
    return options


def check_options(options: PruneOptions) -> None:
    """Exactly one of ratio / keep_macs must be given."""
    if (options.ratio is None) == (options.keep_macs is None):
        raise ConfigError("pruning needs exactly one of ratio and keep_macs",
                          hint="e.g. --prune 0.4 (remove 40 % of channels) or --prune-keep-macs 0.5")


def prune_model(module, example_input, options: PruneOptions, calib=None,
                progress: ProgressFn = no_progress) -> tuple[Any, dict]:
    """Prune a copy of ``module`` (left untouched) -> (pruned module in eval mode, report dict).

    ``example_input``: one input batch (tensor) for tracing and MAC counting. ``calib``: a Dataset
    (x, optional y) needed by Taylor importance. The report holds params and MACs before/after
    (both counters), the ratio used and every layer whose channel counts changed.
    """
    check_options(options)
    model = copy.deepcopy(module).eval()
    progress("counting MACs", 0, 1)
    before = count_macs(model, example_input)
    skip = ignored_names(model, example_input, options)
    batch = taylor_batch(module, calib, options) if options.importance == "taylor" else None
    ratio = options.ratio
    if ratio is None:
        ratio = search_ratio(model, example_input, options, (skip, batch), before["macs_independent"],
                             progress)
    shapes = layer_shapes(model)
    ref_shape = _output(model, example_input).shape
    kept = apply_pruning(model, example_input, ratio, options, (skip, batch), progress)
    out_shape = _output(model, example_input).shape
    if out_shape != ref_shape:
        raise StageError(f"pruning changed the output shape from {list(ref_shape)} to {list(out_shape)}",
                         hint="add the output layer's name to the prune ignore list")
    recon = None
    if options.reconstruct and ratio > 0 and getattr(calib, "x", None) is not None:
        recon = reconstruct(model, module, calib.x[:options.reconstruct_samples], kept, progress=progress)
    after = count_macs(model, example_input)
    report = _report(before, after, ratio, options, skip)
    report["layers"] = channel_changes(shapes, layer_shapes(model))
    if recon is not None:
        report["reconstruction"] = recon
    progress("pruning", 1, 1)
    return model.eval(), report


def _report(before: dict, after: dict, ratio: float, options: PruneOptions, skip: list[str]) -> dict:
    gap = abs(after["macs"] - after["macs_independent"]) / max(1.0, after["macs_independent"])
    return {
        "ratio": round(ratio, 4), "importance": options.importance, "round_to": options.round_to,
        "iterative_steps": options.iterative_steps, "keep_macs_goal": options.keep_macs, "ignored": skip,
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "macs_independent_before": before["macs_independent"],
        "macs_independent_after": after["macs_independent"],
        "ops_total_before": before["ops_total"], "ops_total_after": after["ops_total"],
        "macs_kept": after["macs"] / max(1, before["macs"]),
        "params_kept": after["params"] / max(1, before["params"]),
        "mac_count_gap": gap, "mac_counts_agree": gap <= MAC_TOLERANCE,
    }


def _output(model, x):
    import torch

    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def _weight_layer_types() -> tuple:
    from torch import nn

    return (nn.modules.conv._ConvNd, nn.Linear)


def output_layers(model, example_input) -> list[str]:
    """Names of the conv/linear layers producing the model outputs: the last one run, plus any whose
    output tensor is returned as is (multi-head models)."""
    import torch

    calls: list[tuple[str, Any]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=name: calls.append((n, out)))
             for name, m in model.named_modules() if isinstance(m, _weight_layer_types())]
    try:
        with torch.no_grad():
            out = model(example_input)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    names = {n for n, o in calls if any(o is t for t in outs)}
    if calls:
        names.add(calls[-1][0])
    return sorted(names)


def ignored_names(model, example_input, options: PruneOptions) -> list[str]:
    """The output layers plus the user's ``ignore`` list; unknown names raise InputError."""
    known = dict(model.named_modules())
    unknown = [n for n in options.ignore if n not in known]
    if unknown:
        hint = did_you_mean(unknown[0], [n for n in known if n]) or "names come from model.named_modules()"
        raise InputError(f"prune ignore list names unknown module(s): {', '.join(unknown)}", hint=hint)
    return sorted(set(output_layers(model, example_input)) | set(options.ignore))


def _layer_ratios(model, ratio: float, round_to: int, skip: list[str]) -> tuple[list, dict]:
    """(modules to leave alone, per-layer ratios) so each layer keeps the multiple of ``round_to``
    nearest to (1 - ratio) of its channels, and never fewer than round_to.

    Torch-Pruning rounds the kept channels *down* (a 20 % ratio on 32 channels would keep 24, on
    12 channels none), so each layer gets the ratio that lands on the nearest multiple instead;
    layers with at most round_to channels are left alone.
    """
    names = set(skip)
    ignored, ratios = [], {}
    for name, m in model.named_modules():
        if not isinstance(m, _weight_layer_types()):
            continue
        out = m.out_channels if hasattr(m, "out_channels") else m.out_features
        if name in names or out <= round_to:
            ignored.append(m)
            continue
        keep = max(round_to, int(round(out * (1 - ratio) / round_to)) * round_to)
        ratios[m] = 0.0 if keep >= out else 1 - (keep + 0.5) / out  # +0.5: Torch-Pruning floors
    for name in names:  # ignored containers (a whole block) are honoured as well
        ignored.append(dict(model.named_modules())[name])
    return ignored, ratios


def build_pruner(model, example_input, ratio: float, options: PruneOptions, skip: list[str]):
    """A Torch-Pruning BasePruner (local, uniform ratio) for ``model``."""
    import torch_pruning as tp

    ignored, caps = _layer_ratios(model, ratio, options.round_to, skip)
    ignored += _shuffle_coupled(model)
    taylor = options.importance == "taylor"
    imp = tp.importance.TaylorImportance() if taylor else tp.importance.MagnitudeImportance(p=2)
    with _opaque_shuffle(model):
        return tp.pruner.BasePruner(model, example_input, importance=imp, pruning_ratio=ratio,
                                    pruning_ratio_dict=caps, ignored_layers=ignored,
                                    round_to=options.round_to if options.round_to > 1 else None,
                                    iterative_steps=options.iterative_steps, global_pruning=False)


def _shuffle(x, groups: int):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _opaque_shuffle_fn():
    import torch

    class OpaqueShuffle(torch.autograd.Function):
        """Channel shuffle as one autograd node, so DepGraph sees one op instead of view/transpose/view."""

        @staticmethod
        def forward(ctx, x, groups):
            ctx.groups = groups
            return _shuffle(x, groups)

        @staticmethod
        def backward(ctx, grad):
            return _shuffle(grad, grad.shape[1] // ctx.groups), None

    return OpaqueShuffle.apply


@contextlib.contextmanager
def _opaque_shuffle(model):
    """While DepGraph traces a torchvision ShuffleNetV2, run its channel shuffle as one opaque node.

    Torch-Pruning cannot map channel indices through the shuffle's reshapes (its tracer fails);
    traced as one node, the groups crossing it are recognised and left unpruned (`_crosses_shuffle`),
    while the channels inside each branch are pruned. The model itself is not changed.
    """
    try:
        from torchvision.models import shufflenetv2 as sn
    except ImportError:  # pragma: no cover - torchvision is a dependency
        yield
        return
    if not any(isinstance(m, sn.InvertedResidual) for m in model.modules()):
        yield
        return
    original, sn.channel_shuffle = sn.channel_shuffle, _opaque_shuffle_fn()
    try:
        yield
    finally:
        sn.channel_shuffle = original


def _shuffle_coupled(model) -> list:
    """ShuffleNetV2 layers whose output channels run through a channel shuffle (and so cannot be
    pruned): every conv of branch1 (its depthwise conv ties its input to it) and branch2's last conv."""
    from torchvision.models import shufflenetv2 as sn

    coupled = []
    for m in model.modules():
        if isinstance(m, sn.InvertedResidual):
            coupled += [c for c in m.branch1.modules() if isinstance(c, _weight_layer_types())]
            coupled += [c for c in list(m.branch2.modules())[1:] if isinstance(c, _weight_layer_types())][-1:]
    return coupled


def _crosses_shuffle(group) -> bool:
    for dep, _ in group:
        grad_fn = getattr(dep.target, "grad_fn", None)
        if grad_fn is not None and "OpaqueShuffle" in getattr(grad_fn, "name", lambda: "")():
            return True
    return False


def apply_pruning(model, example_input, ratio: float, options: PruneOptions, plan: tuple,
                  progress: ProgressFn = no_progress) -> dict:
    """Prune ``model`` in place by ``ratio`` over ``options.iterative_steps`` steps.

    Returns {layer name: indices (in the unpruned layer) of the output channels kept} for every
    conv/linear layer that lost output channels.
    """
    skip, batch = plan
    if ratio <= 0:
        return {}
    kept: dict = {}
    try:
        pruner = build_pruner(model, example_input, ratio, options, skip)
        for step in range(options.iterative_steps):
            progress("pruning", step, options.iterative_steps)
            if batch is not None:
                taylor_gradients(model, batch)
            for group in pruner.step(interactive=True):
                if not _crosses_shuffle(group):
                    _record_kept(group, pruner.DG, kept)
                    group.prune()
            model.zero_grad(set_to_none=True)
    except (RuntimeError, ValueError, KeyError, IndexError, AssertionError, ArithmeticError) as exc:
        raise StageError(f"Torch-Pruning could not prune this model: {type(exc).__name__}: {str(exc)[:300]}",
                         hint="list the failing block in the prune ignore list, or lower the ratio") from exc
    model.eval()
    names = {m: n for n, m in model.named_modules()}
    return {names[m]: idx for m, idx in kept.items() if m in names}


def _out_size(m) -> int:
    return m.out_channels if hasattr(m, "out_channels") else m.out_features


def _in_size(m) -> int:
    return m.in_channels if hasattr(m, "in_channels") else m.in_features


def _record_kept(group, graph, kept: dict) -> None:
    """Before ``group`` is pruned: update kept[module] (original indices of the surviving output
    channels) for every conv/linear layer whose output channels the group removes."""
    from torch_pruning import _helpers

    for dep, idxs in group:
        m = dep.target.module
        if not isinstance(m, _weight_layer_types()) or not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        drop = set(int(i) for i in _helpers.to_plain_idxs(idxs))
        current = kept.get(m, list(range(_out_size(m))))
        kept[m] = [c for i, c in enumerate(current) if i not in drop]


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
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    xs = xs[:_recon_samples(teacher, xs)]
    gen = np.random.default_rng(0)
    targets: dict = {}

    def grab(name, m):
        def hook(mod, inp, out):
            y = _positions_view(out.detach(), isinstance(mod, nn.Linear))
            total = len(y)
            n_in = _in_size(layers[name])
            count = min(len(y), max(RECON_MIN_POSITIONS, RECON_OVERDETERMINED * n_in))
            pos = torch.from_numpy(np.sort(gen.choice(len(y), size=count, replace=False)))
            cols = kept.get(name)
            y = y[pos] if cols is None else y[pos][:, torch.tensor(cols)]
            targets[name] = (pos, y.double(), total)
        return m.register_forward_hook(hook)

    hooks = [grab(n, t_mods[n]) for n in layers]
    try:
        with torch.no_grad():
            teacher(xs)
    finally:
        for h in hooks:
            h.remove()
    stats = {"samples": len(xs), "layers_refit": 0, "layers_kept": 0, "error_before": 0.0, "error_after": 0.0}

    def refit(name):
        def pre_hook(mod, inp):
            done = stats["layers_refit"] + stats["layers_kept"]
            progress("reconstructing pruned layers", done, len(layers))
            if name not in targets:
                return
            pos, y, total = targets.pop(name)
            xin = _positions_view(inp[0].detach(), isinstance(mod, nn.Linear))
            if len(xin) != total or y.shape[1] != _out_size(mod):
                return
            _refit_layer(mod, xin[pos].double(), y, stats)
        return layers[name].register_forward_pre_hook(pre_hook)

    hooks = [refit(n) for n in layers]
    try:
        with torch.no_grad():
            model(xs)
    finally:
        for h in hooks:
            h.remove()
    stats["error_before"] = round(stats["error_before"], 4)
    stats["error_after"] = round(stats["error_after"], 4)
    log.info("reconstruction: %d layers refit, %d kept, error %.4f -> %.4f", stats["layers_refit"],
             stats["layers_kept"], stats["error_before"], stats["error_after"])
    return stats


def _recon_samples(teacher, xs) -> int:
    """How many samples one forward pass can take within RECON_MEMORY (largest activation x 8)."""
    import torch

    biggest = [0]
    hooks = [m.register_forward_hook(lambda mod, i, o: biggest.__setitem__(0, max(
        biggest[0], o.numel() if isinstance(o, torch.Tensor) else 0))) for m in teacher.modules()]
    try:
        with torch.no_grad():
            teacher(xs[:1])
    finally:
        for h in hooks:
            h.remove()
    return max(1, min(len(xs), int(RECON_MEMORY // max(1, biggest[0] * 4 * 8))))


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


def taylor_batch(module, calib, options: PruneOptions):
    """(inputs, targets) for Taylor importance: labels when the data has them, else the model's own
    top-1 predictions (so unlabelled calibration data works)."""
    import torch

    if calib is None or getattr(calib, "x", None) is None:
        raise InputError("Taylor importance needs calibration data",
                         hint="pass --calib, or use importance magnitude")
    x = torch.from_numpy(calib.x[:options.taylor_samples]).float()
    y = getattr(calib, "y", None)
    if y is not None:
        return x, torch.from_numpy(y[:options.taylor_samples]).long()
    with torch.no_grad():
        out = torch.cat([module.eval()(x[i:i + TAYLOR_BATCH]) for i in range(0, len(x), TAYLOR_BATCH)])
    if out.ndim != 2:
        raise InputError(f"Taylor importance needs (N, classes) outputs, the model gives {list(out.shape)}",
                         hint="use importance magnitude")
    return x, out.argmax(1)


def taylor_gradients(model, batch) -> None:
    """Accumulate dL/dw over the batch (eval mode: BatchNorm statistics stay as they are)."""
    import torch.nn.functional as F

    x, y = batch
    model.eval()
    for p in model.parameters():  # a frozen backbone would give no gradients to rank by
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    for i in range(0, len(x), TAYLOR_BATCH):
        loss = F.cross_entropy(model(x[i:i + TAYLOR_BATCH]), y[i:i + TAYLOR_BATCH], reduction="sum") / len(x)
        loss.backward()


def search_ratio(model, example_input, options: PruneOptions, plan: tuple, base_macs: float,
                 progress: ProgressFn = no_progress) -> float:
    """Smallest channel ratio whose pruned copy keeps at most ``keep_macs`` of the MACs (bisection)."""
    if options.keep_macs is None or options.keep_macs >= 1:
        return 0.0
    goal = options.keep_macs * base_macs  # base_macs: FlopCounterMode count of the unpruned model
    lo, hi = 0.0, MAX_RATIO
    for step in range(SEARCH_STEPS):
        progress("searching the pruning ratio", step, SEARCH_STEPS)
        mid = (lo + hi) / 2
        trial = copy.deepcopy(model)
        apply_pruning(trial, example_input, mid, options, plan)
        if independent_macs(trial, example_input) <= goal:  # the cheaper counter; both agree within 2 %
            hi = mid
        else:
            lo = mid
    log.info("keep_macs %.3f -> channel ratio %.4f", options.keep_macs, hi)
    return hi


def count_macs(model, example_input, *, independent: bool = True) -> dict:
    """params; MACs of conv/linear weights (Torch-Pruning hooks, bias adds excluded); all ops
    Torch-Pruning counts (adds biases, BatchNorm, activations, pooling); and, when ``independent``,
    MACs from FlopCounterMode (FLOPs / 2)."""
    import torch_pruning as tp
    from torch_pruning.utils import op_counter

    hooks = _subclass_hooks(model, op_counter.MODULES_MAPPING)
    op_counter.CUSTOM_MODULES_MAPPING = dict(hooks)
    ops, params = tp.utils.count_ops_and_params(model, example_input)
    bare = copy.deepcopy(model)
    for m in bare.modules():  # MACs exclude bias adds, which Torch-Pruning counts with the layer
        if isinstance(m, _weight_layer_types()) and getattr(m, "bias", None) is not None:
            m.bias = None
    op_counter.CUSTOM_MODULES_MAPPING = dict(hooks)
    _, _, layer_ops, _ = tp.utils.count_ops_and_params(bare, example_input, layer_wise=True)
    macs = sum(v or 0 for m, v in layer_ops.items() if isinstance(m, _weight_layer_types()))
    result = {"params": int(params), "macs": int(macs), "ops_total": int(ops)}
    if independent:
        result["macs_independent"] = independent_macs(model, example_input)
    return result


def _subclass_hooks(model, mapping: dict) -> dict:
    """Counting hooks for subclasses of counted modules (e.g. Conv2dStaticSamePadding), which
    Torch-Pruning's exact-type lookup would otherwise count as zero."""
    extra = {}
    for m in model.modules():
        if type(m) in mapping:
            continue
        base = next((b for b in type(m).__mro__[1:] if b in mapping), None)
        if base is not None:
            extra[type(m)] = mapping[base]
    return extra


def independent_macs(model, example_input) -> int:
    """MACs from PyTorch's aten-level FlopCounterMode (convolution, matmul, ...): FLOPs / 2."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example_input)
    return int(counter.get_total_flops() // 2)


def layer_shapes(model) -> dict[str, tuple[int, int]]:
    """(in, out) channels of every conv/linear layer, by name."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, _weight_layer_types()):
            shapes[name] = ((m.in_channels, m.out_channels) if hasattr(m, "out_channels")
                            else (m.in_features, m.out_features))
    return shapes


def channel_changes(before: dict, after: dict) -> list[dict]:
    """Layers whose channel counts changed, in model order."""
    return [{"layer": n, "in_before": before[n][0], "in_after": after[n][0],
             "out_before": before[n][1], "out_after": after[n][1]}
            for n in before if n in after and before[n] != after[n]]


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

    from .util import write_bytes_atomic

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
