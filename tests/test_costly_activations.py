"""Keeping an activation unrounded: which ones cost most at the outputs (diagnose.output_costs), the nodes that keep
one in float (diagnose.float_region), and the accuracy search's candidates built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import toy_models

from edgepack.backends import onnx as onnx_backend
from edgepack.backends.onnx_quantize import quantize_onnx
from edgepack.quantize import diagnose, search


@pytest.fixture(scope="module")
def outlier(tmp_path_factory) -> dict:
    """Seeded OutlierNet with its x256 channel: conv1's ReLU output is the one activation INT8 cannot hold."""
    d = tmp_path_factory.mktemp("costly")
    torch.manual_seed(0)
    model = toy_models.inject_outlier(toy_models.OutlierNet().eval())
    fp32 = d / "fp32.onnx"
    onnx_backend.export(model, (1, 1, 16, 16), fp32, opset=17)
    x = np.random.default_rng(0).normal(0, 1, (48, 1, 16, 16)).astype(np.float32)
    int8 = d / "int8.onnx"
    quantize_onnx(fp32, int8, x[:32], target_arch="x86_64")
    fmodel = onnx.load(str(fp32))
    relu1 = next(n for n in fmodel.graph.node if n.op_type == "Relu").output[0]
    return {"fp32": fp32, "int8": int8, "x": x, "dir": d, "model": fmodel, "relu1": relu1}


def _rounded(path: Path) -> set[str]:
    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()))


def test_the_outlier_activation_costs_most_at_the_output(outlier):
    costs = diagnose.output_costs(outlier["fp32"], outlier["int8"], outlier["x"][32:])
    assert set(costs) == _rounded(outlier["int8"])  # every rounded activation is measured
    ranked = sorted(costs, key=costs.get)
    assert ranked[0] == outlier["relu1"], costs
    assert costs[ranked[0]] + 10 < costs[ranked[1]], costs  # by far: one channel took the whole 8-bit range


def test_a_float_region_keeps_its_activation_unrounded_and_the_outputs_closer(outlier):
    region = diagnose.float_region(outlier["model"], outlier["relu1"])
    ops = {n.name: n.op_type for n in outlier["model"].graph.node}
    # conv1 with its ReLU, and the reader conv2 with its fused ReLU
    assert [ops[n] for n in region] == ["Conv", "Relu", "Conv", "Relu"], region
    assert outlier["relu1"] in _rounded(outlier["int8"])
    kept = outlier["dir"] / "kept.onnx"
    rec = quantize_onnx(outlier["fp32"], kept, outlier["x"][:32], target_arch="x86_64", exclude_nodes=region)
    assert outlier["relu1"] not in _rounded(kept) and rec["nodes_excluded"] == region
    val = outlier["x"][32:]
    ref = onnx_backend.Runner(outlier["fp32"]).run_samples(val)
    before = _sqnr(ref, onnx_backend.Runner(outlier["int8"]).run_samples(val))
    after = _sqnr(ref, onnx_backend.Runner(kept).run_samples(val))
    assert after > before + 10, (before, after)


def test_excluding_the_producer_alone_leaves_the_activation_rounded(outlier):
    """What the search's "layers in float" candidates do: why they cannot fix activation error."""
    conv1 = next(n for n in outlier["model"].graph.node if n.op_type == "Conv").name
    alone = outlier["dir"] / "alone.onnx"
    quantize_onnx(outlier["fp32"], alone, outlier["x"][:32], target_arch="x86_64", exclude_nodes=[conv1])
    assert outlier["relu1"] in _rounded(alone)


def test_costly_activations_come_with_their_regions(outlier):
    rows = diagnose.layer_errors(outlier["fp32"], outlier["int8"], outlier["x"][32:])
    ranked = diagnose.costly_activations(outlier["fp32"], outlier["int8"], outlier["x"][32:], rows, limit=2)
    assert len(ranked) <= 2 and ranked[0]["tensor"] == outlier["relu1"]
    assert ranked[0]["nodes"] == diagnose.float_region(outlier["model"], outlier["relu1"])
    assert [a["output_sqnr_db"] for a in ranked] == sorted(a["output_sqnr_db"] for a in ranked)


def test_the_search_tries_unrounded_activations_before_float_layers(tmp_path):
    costly = [{"tensor": "a", "nodes": ["c1", "r1", "c2"]}, {"tensor": "b", "nodes": ["c2", "c3"]},
              {"tensor": "c", "nodes": ["c4"]}]
    space = search.SearchSpace(method="minmax", per_channel=True, more_calib=lambda: None,
                               diagnose=lambda p: [{"node": "c9", "op": "Conv", "tensor": "z"}],
                               weight_rounding="gptq", costly_activations=lambda p, rows: costly)
    best = search.Trial("default recipe", {}, {"agreement": 0.9}, 1, None, 1.0, False, path=tmp_path / "m")
    names = {name: settings for name, settings in search.candidates(space, lambda: best)}
    assert names["1 costliest activation(s) unrounded"]["exclude_nodes"] == ["c1", "r1", "c2"]
    two = names["2 costliest activation(s) unrounded"]
    assert two["exclude_nodes"] == ["c1", "r1", "c2", "c3"] and two["unrounded"] == ["a", "b"]
    assert "4 costliest activation(s) unrounded" not in names  # only 3 measured
    order = list(names)
    assert order.index("2 costliest activation(s) unrounded") < order.index("1 most sensitive layer(s) in float")
