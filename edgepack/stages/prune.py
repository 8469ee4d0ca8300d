"""Prune stage: remove whole channels (and optionally fine-tune) before export, so the graph shrinks.

Reads ``ctx.config.prune`` (a PruneOptions, or None to skip the stage). Replaces ``ctx.model.module``
with the pruned model, keeps the unpruned LoadedModel in ``ctx.unpruned`` (for the report's
unpruned-FP32 column) and records everything in ``ctx.records["prune"]``. `edgepack prune` saves
the pruned model itself (api.prune).
"""

from __future__ import annotations

import dataclasses
import logging

from edgepack.config import PruneOptions
from edgepack.errors import InputError
from edgepack.inputs.data import rows
from edgepack.pruning.args import to_torch
from edgepack.pruning.channels import prune_model
from edgepack.pruning.transformer import transformer_layers
from edgepack.stages.context import BuildContext

log = logging.getLogger(__name__)


def run(ctx: BuildContext) -> dict | None:
    """Prune ``ctx.model`` in place of the context; returns the pruning report (None when skipped)."""

    options: PruneOptions | None = getattr(ctx.config, "prune", None)
    if options is None:
        return None
    if ctx.model.kind != "torch":
        raise InputError("pruning needs a PyTorch model, got an ONNX file",
                         hint="pass the PyTorch source (torchvision:<arch>, factory, .pt2) or drop --prune")
    unpruned = ctx.model
    method = ctx.inputs.prune_method
    if method == "channels" and transformer_layers(ctx.model.module):
        method = "transformer"  # a vision transformer (ViT, DeiT): channel pruning breaks its head reshapes
    pruned, report = METHODS[method](ctx, options)
    if options.finetune is not None and options.finetune.data:
        report["finetune"] = _finetune(ctx, pruned, unpruned.module, options)
    return _finish(ctx, unpruned, pruned, report)


def _prune_channels(ctx: BuildContext, options: PruneOptions) -> tuple:
    """Whole channels of convolutions and linear layers (edgepack.pruning.channels, Torch-Pruning)."""

    calib = ctx.calib
    if isinstance(calib.x, dict):   # several inputs: the forward's order (Torch-Pruning calls model(*args))
        calib = dataclasses.replace(calib, x={n: calib.x[n] for n in ctx.inputs.input_names})
    example = to_torch(rows(calib.x, 0, 1))
    pruned, report = prune_model(ctx.model.module, example, options, calib=calib, progress=ctx.progress)
    if not report["mac_counts_agree"]:
        ctx.warn(f"MAC counts disagree by {report['mac_count_gap']:.1%} (Torch-Pruning "
                 f"{report['macs_after']:,} vs FlopCounterMode {report['macs_independent_after']:,}): "
                 "some layer escapes one of the counters")
    return pruned, report


def _finish(ctx: BuildContext, unpruned, pruned, report: dict) -> dict:
    keep = ctx.config.prune.keep_macs
    if keep is not None and report["macs_kept"] > keep * 1.02:
        ctx.warn(f"pruning kept {report['macs_kept']:.1%} of the MACs, above the goal of {keep:.1%}: the layers "
                 "left alone (and a text model's embeddings) hold the rest")
    ctx.model = dataclasses.replace(unpruned, module=pruned.eval())
    ctx.unpruned = unpruned
    ctx.records["prune"] = report
    log.info("pruned: params %d -> %d, MACs %d -> %d", report["params_before"], report["params_after"],
             report["macs_before"], report["macs_after"])
    return report


def _prune_transformer(ctx: BuildContext, options: PruneOptions) -> tuple:
    """Attention heads and FFN neurons of a transformer encoder, text or vision (edgepack.pruning.transformer)."""
    from edgepack.config import MAX_RATIO
    from edgepack.pruning.channels import SEARCH_STEPS
    from edgepack.pruning.transformer import count, prune_transformer, search_ratio, taylor_scores

    inputs = ctx.inputs.torch_args(rows(ctx.calib.x, 0, 1))
    before = count(ctx.model.module, inputs)
    ctx.progress("pruning attention heads and FFN neurons", 0, 1)
    scores = None
    if options.importance == "taylor":
        calib = ctx.inputs.torch_args(rows(ctx.calib.x, 0, options.taylor_samples))
        scores = taylor_scores(ctx.model.module, calib)
    ratio = options.ratio
    if ratio is None:  # a MAC goal
        ratio = search_ratio(ctx.model.module, options.keep_macs, inputs, round_to=options.round_to, scores=scores,
                             steps=SEARCH_STEPS, max_ratio=MAX_RATIO)
    pruned, layers = prune_transformer(ctx.model.module, ratio, round_to=options.round_to, scores=scores)
    after = count(pruned, inputs)
    ctx.progress("pruning attention heads and FFN neurons", 1, 1)
    report = {"kind": "transformer heads + FFN", "ratio": ratio, "keep_macs": options.keep_macs,
              "importance": options.importance,
              "round_to": options.round_to, "ignored": [],
              "params_before": before["params"], "params_after": after["params"],
              "macs_before": before["macs"], "macs_after": after["macs"],
              "macs_independent_before": before["macs"], "macs_independent_after": after["macs"],
              "macs_kept": after["macs"] / max(1, before["macs"]),
              "params_kept": after["params"] / max(1, before["params"]),
              "mac_count_gap": 0.0, "mac_counts_agree": True, "layers": layers}
    return pruned, report


def _finetune(ctx: BuildContext, pruned, teacher, options: PruneOptions) -> dict:
    from edgepack.pruning.finetune import finetune

    ft = options.finetune
    data = ctx.inputs.load(ft.data, role="fine-tuning", count=ft.samples, seed=ft.seed, shape=ctx.input_shape,
                           progress=ctx.progress)
    return finetune(pruned, data, ft, teacher=teacher if ft.distill else None, input_names=ctx.inputs.input_names,
                    progress=ctx.progress)


METHODS = {"channels": _prune_channels, "transformer": _prune_transformer}
