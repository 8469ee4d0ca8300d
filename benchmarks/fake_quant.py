"""Simulated INT8 for a PyTorch model, for benchmarks/bench_qat_distill.py (not part of edgepack).

The model is traced with torch.fx (Conv2d, Linear and BatchNorm2d kept as modules); each BatchNorm that follows a
convolution is folded into it, as onnxslim and the quantizers do; every Conv/Linear weight is fake-quantized per
output channel, symmetric, on the int8 grid ``max|w| / 127``; and every float tensor the graph computes is
fake-quantized per tensor, asymmetric, uint8, with the min/max seen on calibration data (onnxruntime's
``quantize_static`` MinMax): except a tensor read only by a ReLU/ReLU6/Hardtanh/clamp (the quantizer fuses the
activation and rounds its output instead), shape and padding operations (they move values, not round them) and the
graph outputs (edgepack keeps outputs float). torch's fake-quantize ops pass gradients straight through (STE),
so the simulated model can be trained.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
ACTIVATION_FNS = (F.relu, F.relu6, F.hardtanh, torch.relu, torch.clamp)
MOVE_METHODS = {"size", "view", "reshape", "flatten", "dim", "contiguous", "permute", "transpose", "squeeze",
                "unsqueeze"}
MOVE_FNS = {torch.flatten, torch.reshape, getattr, operator.getitem}
MOVE_MODULES = (nn.ZeroPad2d, nn.Dropout, nn.Identity, nn.Flatten)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 (-127..127), scale max|w| / 127."""

    def forward(self, w):
        scale = w.detach().reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-12) / 127.0
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), 0,
                                                      -127, 127)


class ActivationFakeQuant(nn.Module):
    """uint8 per tensor over the observed [min, max] (0 included). mode: observe | quant | off."""

    def __init__(self):
        super().__init__()
        self.mode = "observe"
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))

    def forward(self, x):
        if not torch.is_tensor(x) or not x.is_floating_point() or self.mode == "off":
            return x
        if self.mode == "observe":
            self.lo = torch.minimum(self.lo, x.detach().min())
            self.hi = torch.maximum(self.hi, x.detach().max())
            return x
        scale = float((self.hi - self.lo).clamp_min(1e-8) / 255.0)
        return torch.fake_quantize_per_tensor_affine(x, scale, int(round(float(-self.lo) / scale)), 0, 255)


def _fold_batchnorms(gm: fx.GraphModule) -> None:
    mods = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0]
        if src.op != "call_module" or not isinstance(mods[src.target], nn.Conv2d) or len(src.users) != 1:
            continue
        conv, bn = mods[src.target], mods[node.target]
        s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        with torch.no_grad():
            conv.weight.mul_(s.reshape(-1, 1, 1, 1))
            bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(s)
            conv.bias = nn.Parameter((bias - bn.running_mean) * s + bn.bias.detach())
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)


def _rounded_here(gm: fx.GraphModule, node: fx.Node) -> bool:
    mods = dict(gm.named_modules())

    def is_activation(n):
        return (n.op == "call_module" and isinstance(mods[n.target], ACTIVATIONS)) or \
            (n.op == "call_function" and n.target in ACTIVATION_FNS)

    moves = (node.op in ("get_attr", "output") or (node.op == "call_method" and node.target in MOVE_METHODS)
             or (node.op == "call_function" and node.target in MOVE_FNS)
             or (node.op == "call_module" and isinstance(mods[node.target], MOVE_MODULES)))
    fused = len(node.users) == 1 and is_activation(next(iter(node.users)))
    return not moves and not fused and not any(u.op == "output" for u in node.users)


def prepare(model: nn.Module, calib: torch.Tensor, batch: int = 50) -> fx.GraphModule:
    """A simulated-INT8 copy of ``model`` (eval mode), its activation ranges observed on ``calib``."""
    gm = fx.GraphModule(copy.deepcopy(model), _Tracer().trace(copy.deepcopy(model)))
    _fold_batchnorms(gm)
    for m in gm.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(m, "weight", WeightFakeQuant())
    for k, node in enumerate(n for n in list(gm.graph.nodes) if _rounded_here(gm, n)):
        name = f"act_fq_{k}"
        gm.add_submodule(name, ActivationFakeQuant())
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
    gm.graph.lint()
    gm.recompile()
    gm.eval()
    with torch.no_grad():
        for i in range(0, len(calib), batch):
            gm(calib[i:i + batch])
    set_mode(gm, "quant")
    return gm


def set_mode(gm: nn.Module, mode: str) -> None:
    for m in gm.modules():
        if isinstance(m, ActivationFakeQuant):
            m.mode = mode


def float_model(gm: fx.GraphModule) -> fx.GraphModule:
    """The FP32 model with ``gm``'s (trained, BatchNorm-folded) weights: no rounding anywhere."""
    out = copy.deepcopy(gm)
    for m in out.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    set_mode(out, "off")
    return out
