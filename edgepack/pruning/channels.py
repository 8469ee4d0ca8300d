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
import logging
from typing import Any

from edgepack.config import MAX_RATIO, PruneOptions, check_options
from edgepack.errors import InputError, StageError, did_you_mean
from edgepack.inputs.data import rows
from edgepack.pruning.args import call, count, first, take, to_torch
from edgepack.pruning.reconstruct import out_size, reconstruct
from edgepack.util import ProgressFn, no_progress

log = logging.getLogger(__name__)
MAC_TOLERANCE = 0.02        # relative gap allowed between the two MAC counts
SEARCH_STEPS = 7            # bisection steps on the ratio for a keep_macs goal (ratio resolution ~0.007)
TAYLOR_BATCH = 16


def prune_model(module, example_input, options: PruneOptions, calib=None,
                progress: ProgressFn = no_progress) -> tuple[Any, dict]:
    """Prune a copy of ``module`` (left untouched) -> (pruned module in eval mode, report dict).

    ``example_input``: one input batch (a tensor, or a tuple of tensors for a forward with several arguments,
    see edgepack.pruning.args) for tracing and MAC counting. ``calib``: a Dataset
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
        recon = reconstruct(model, module, rows(calib.x, 0, options.reconstruct_samples), kept, progress=progress)
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
        return first(call(model, x))


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
            out = call(model, example_input)
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


def _record_kept(group, graph, kept: dict) -> None:
    """Before ``group`` is pruned: update kept[module] (original indices of the surviving output
    channels) for every conv/linear layer whose output channels the group removes."""
    from torch_pruning import _helpers

    for dep, idxs in group:
        m = dep.target.module
        if not isinstance(m, _weight_layer_types()) or not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        drop = set(int(i) for i in _helpers.to_plain_idxs(idxs))
        current = kept.get(m, list(range(out_size(m))))
        kept[m] = [c for i, c in enumerate(current) if i not in drop]


def taylor_batch(module, calib, options: PruneOptions):
    """(inputs, targets) for Taylor importance: labels when the data has them, else the model's own
    top-1 predictions (so unlabelled calibration data works)."""
    import torch

    if calib is None or getattr(calib, "x", None) is None:
        raise InputError("Taylor importance needs calibration data",
                         hint="pass --calib, or use importance magnitude")
    x = to_torch(rows(calib.x, 0, options.taylor_samples))
    y = getattr(calib, "y", None)
    if y is not None:
        return x, torch.from_numpy(y[:options.taylor_samples]).long()
    with torch.no_grad():
        out = torch.cat([first(call(module.eval(), take(x, i, i + TAYLOR_BATCH)))
                         for i in range(0, count(x), TAYLOR_BATCH)])
    if out.ndim != 2:
        raise InputError(f"Taylor importance needs (N, classes) outputs, the model gives {list(out.shape)}",
                         hint="use importance magnitude")
    return x, out.argmax(1)


def taylor_gradients(model, batch) -> None:
    """Accumulate dL/dw over the batch (eval mode: BatchNorm statistics stay as they are)."""
    import torch
    import torch.nn.functional as F

    x, y = batch
    model.eval()
    for p in model.parameters():  # a frozen backbone would give no gradients to rank by
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    for i in range(0, count(x), TAYLOR_BATCH):
        loss = F.cross_entropy(first(call(model, take(x, i, i + TAYLOR_BATCH))), y[i:i + TAYLOR_BATCH],
                               reduction="sum") / count(x)
        loss.backward()
    for p in model.parameters():  # a head the first output does not use (an auxiliary output): no gradient,
        if p.grad is None:        # which Torch-Pruning's Taylor importance cannot read; it ranks as zero
            p.grad = torch.zeros_like(p)


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
        call(model, example_input)
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
