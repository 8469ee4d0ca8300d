"""Structured pruning of transformer encoders: whole attention heads and FFN neurons.

Works on Hugging Face BERT-style encoders (BERT, MiniLM, RoBERTa, ...), vision encoders of the same layout
(ViT, DeiT: the query/key/value block is ``attention.attention`` there) and DistilBERT (q_lin/k_lin/v_lin/out_lin,
ffn.lin1/lin2; see `Parts`): every layer with an
``attention`` block that has ``prune_heads`` (transformers' own head pruning, which shrinks the
query/key/value projections and the attention output projection together and updates the head
counts the forward pass reads) and an FFN of ``intermediate.dense`` (hidden -> I) followed by
``output.dense`` (I -> hidden). Importance is weight magnitude (a head's squared query, key, value
rows and output-projection columns; an FFN neuron's squared input row and output column) or, with
calibration texts, first-order Taylor: the squared sum of weight x gradient over a head's or a neuron's
parameters (Molchanov et al. 2019), the loss being cross-entropy against the model's own top-1 (the
calibration texts have no labels), accumulated over batches. Every
layer loses the same fraction; at least one head is kept, and the FFN width stays a multiple of
``round_to``. The hidden size (the residual stream) is left alone, so embeddings, LayerNorms and
the classifier head are unchanged.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from edgepack.errors import InputError

log = logging.getLogger(__name__)


def self_attention(attention):
    """The query/key/value block of an attention module: ``self`` in BERT-style encoders, ``attention`` in
    transformers' vision encoders (ViT, DeiT); None when it has neither."""
    for name in ("self", "attention"):
        block = getattr(attention, name, None)
        if hasattr(block, "num_attention_heads") and hasattr(block, "query"):
            return block
    return None


class Parts:
    """The prunable pieces of one encoder layer, whatever the family calls them: BERT / ViT (attention.self or
    attention.attention with query/key/value, attention.output.dense, intermediate.dense, output.dense) or
    DistilBERT (attention with q_lin/k_lin/v_lin/out_lin and n_heads, ffn.lin1, ffn.lin2). Both attention modules
    have transformers' own ``prune_heads``, which shrinks the projections and updates the head count."""

    def __init__(self, layer):
        att = layer.attention
        sa = self_attention(att)
        if sa is not None:
            self.qkv = (sa.query, sa.key, sa.value)
            self.proj = att.output.dense
            self.heads, self.head_size = sa.num_attention_heads, sa.attention_head_size
            self._ffn = ((layer.intermediate, "dense"), (layer.output, "dense"))
        else:  # DistilBERT
            self.qkv = (att.q_lin, att.k_lin, att.v_lin)
            self.proj = att.out_lin
            self.heads, self.head_size = att.n_heads, att.attention_head_size
            self._ffn = ((layer.ffn, "lin1"), (layer.ffn, "lin2"))
        self.attention = att

    @staticmethod
    def fits(layer) -> bool:
        att = getattr(layer, "attention", None)
        if not hasattr(att, "prune_heads"):
            return False
        if self_attention(att) is not None:
            return hasattr(getattr(layer, "intermediate", None), "dense") and hasattr(
                getattr(layer, "output", None), "dense")
        return (all(hasattr(att, n) for n in ("q_lin", "k_lin", "v_lin", "out_lin", "n_heads"))
                and hasattr(getattr(layer, "ffn", None), "lin1") and hasattr(layer.ffn, "lin2"))

    @property
    def ffn_in(self):
        owner, name = self._ffn[0]
        return getattr(owner, name)

    @property
    def ffn_out(self):
        owner, name = self._ffn[1]
        return getattr(owner, name)

    def set_ffn(self, lin_in, lin_out) -> None:
        setattr(*self._ffn[0], lin_in)
        setattr(*self._ffn[1], lin_out)


def transformer_layers(model) -> list[tuple[str, Any]]:
    """(name, layer) of every encoder layer with prunable heads and FFN, in model order."""
    return [(name, m) for name, m in model.named_modules() if Parts.fits(m)]


def head_importance(layer):
    """(heads,) magnitude of each attention head: its query/key/value rows and output columns."""
    p = Parts(layer)
    heads, size = p.heads, p.head_size
    rows = sum(lin.weight.detach().reshape(heads, size, -1).pow(2).sum((1, 2)) for lin in p.qkv)
    cols = p.proj.weight.detach().reshape(p.proj.weight.shape[0], heads, size).pow(2).sum((0, 2))
    return rows + cols


def neuron_importance(layer):
    """(intermediate,) magnitude of each FFN neuron: its input row and output column."""
    p = Parts(layer)
    return p.ffn_in.weight.detach().pow(2).sum(1) + p.ffn_out.weight.detach().pow(2).sum(0)


TAYLOR_BATCH = 8


def taylor_scores(module, inputs: tuple) -> dict:
    """{layer name: (head scores, neuron scores)} of ``module`` (left untouched: a copy gets the gradients):
    per batch, (sum of weight x gradient over the group)^2, summed over batches. ``inputs``: positional
    (N, L) int64 token tensors of calibration texts."""
    import torch
    import torch.nn.functional as F

    model = copy.deepcopy(module).eval()
    layers = _layers_or_raise(model)
    scores: dict = {}
    for p in model.parameters():  # a source that froze its encoder still gets gradients on the copy
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    for start in range(0, len(inputs[0]), TAYLOR_BATCH):
        batch = tuple(t[start:start + TAYLOR_BATCH] for t in inputs)
        logits = model(*batch)
        F.cross_entropy(logits, logits.detach().argmax(1)).backward()
        with torch.no_grad():
            for name, layer in layers:
                h, n = _head_taylor(layer), _neuron_taylor(layer)
                old = scores.get(name)
                scores[name] = (h, n) if old is None else (old[0] + h, old[1] + n)
        model.zero_grad(set_to_none=True)
    return scores


def _wg(lin, dim_out: bool):
    """Per output row (dim_out) or input column: sum of weight x gradient (bias included for rows)."""
    wg = lin.weight * lin.weight.grad
    if dim_out:
        total = wg.sum(1)
        return total + lin.bias * lin.bias.grad if lin.bias is not None and lin.bias.grad is not None else total
    return wg.sum(0)


def _head_taylor(layer):
    p = Parts(layer)
    rows = sum(_wg(lin, True).reshape(p.heads, p.head_size).sum(1) for lin in p.qkv)
    return (rows + _wg(p.proj, False).reshape(p.heads, p.head_size).sum(1)).pow(2)


def _neuron_taylor(layer):
    p = Parts(layer)
    return (_wg(p.ffn_in, True) + _wg(p.ffn_out, False)).pow(2)


def heads_to_keep(heads: int, ratio: float) -> int:
    """Heads a layer keeps at ``ratio``: the nearest whole number, at least one."""
    return max(1, heads - int(round(heads * ratio)))


def neurons_to_keep(width: int, ratio: float, round_to: int) -> int:
    """FFN neurons kept: the multiple of round_to nearest to (1 - ratio) * width, at least round_to."""
    if width <= round_to:
        return width
    return min(width, max(round_to, int(round(width * (1 - ratio) / round_to)) * round_to))


def prune_transformer(module, ratio: float, *, round_to: int = 8,
                      scores: dict | None = None) -> tuple[Any, list[dict]]:
    """Prune a copy of ``module`` (left untouched): ``ratio`` of the heads and of the FFN neurons of
    every encoder layer -> (pruned module in eval mode, per-layer changes). Ranked by ``scores``
    (``taylor_scores`` of ``module``) when given, else by weight magnitude."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    model = copy.deepcopy(module).eval()
    layers = _layers_or_raise(model)
    taylor = scores or {}
    changes = []
    for name, layer in layers:
        parts = Parts(layer)
        heads = parts.heads
        keep_h = heads_to_keep(heads, ratio)
        h_score, n_score = taylor.get(name, (head_importance(layer), neuron_importance(layer)))
        drop = torch.argsort(h_score)[:heads - keep_h].tolist()
        if drop:
            parts.attention.prune_heads(sorted(drop))
        width = parts.ffn_in.out_features
        keep_n = neurons_to_keep(width, ratio, round_to)
        if keep_n < width:
            idx = torch.sort(torch.argsort(n_score, descending=True)[:keep_n]).values
            parts.set_ffn(prune_linear_layer(parts.ffn_in, idx, dim=0), prune_linear_layer(parts.ffn_out, idx, dim=1))
        changes.append({"layer": name, "heads_before": heads, "heads_after": keep_h,
                        "ffn_before": width, "ffn_after": parts.ffn_in.out_features})
    log.info("pruned %d transformer layers: heads %s", len(changes), [c["heads_after"] for c in changes])
    return model.eval(), changes


def _layers_or_raise(model) -> list:
    layers = transformer_layers(model)
    if not layers:
        raise InputError("no transformer encoder layers found to prune",
                         hint="transformer pruning supports Hugging Face BERT-style and ViT encoders (attention."
                              "prune_heads, intermediate.dense, output.dense) and DistilBERT (attention.q_lin ..., "
                              "ffn.lin1, ffn.lin2)")
    return layers


def search_ratio(module, keep_macs: float, inputs: tuple, *, round_to: int, scores: dict | None,
                 steps: int, max_ratio: float) -> float:
    """Smallest ratio whose pruned copy keeps at most ``keep_macs`` of the MACs (bisection, ``steps``
    halvings); ``max_ratio`` when even that keeps more (the embeddings and the hidden size stay)."""
    goal = keep_macs * count(module, inputs)["macs"]
    lo, hi = 0.0, max_ratio
    for _ in range(steps):
        mid = (lo + hi) / 2
        pruned, _ = prune_transformer(module, mid, round_to=round_to, scores=scores)
        if count(pruned, inputs)["macs"] <= goal:
            hi = mid
        else:
            lo = mid
    log.info("keep_macs %.3f -> head/FFN ratio %.4f", keep_macs, hi)
    return hi


def count(model, inputs: tuple) -> dict:
    """params and MACs (FlopCounterMode, FLOPs / 2) of a text model called with positional ``inputs``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*inputs)
    return {"params": sum(p.numel() for p in model.parameters()), "macs": int(counter.get_total_flops() // 2)}
