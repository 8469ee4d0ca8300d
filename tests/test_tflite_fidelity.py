"""The FP32 .tflite is checked against the ONNX model it came from (tflite_fidelity), and plain Einsum contractions
are spelled as MatMul before onnx2tf sees them (onnx_einsum). Tiny seeded models, offline."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from edgepack.backends import onnx_einsum, tflite_fidelity  # noqa: E402
from edgepack.errors import StageError  # noqa: E402

#: (equation, shape of A, shape of B): attention scores and values (MaxViT's 5-D ones), a plain matrix product,
#: an output in another order, two contracted letters, a letter kept from one side only
EQUATIONS = [
    ("bghid,bghjd->bghij", (1, 4, 2, 6, 8), (1, 4, 2, 5, 8)),
    ("bghij,bghjd->bghid", (1, 4, 2, 6, 5), (1, 4, 2, 5, 8)),
    ("ij,jk->ik", (3, 4), (4, 5)),
    ("bij,bjk->bki", (2, 3, 4), (2, 4, 5)),
    ("abcd,cde->abe", (2, 3, 4, 5), (4, 5, 6)),
    ("bqhd,bkhd->bhqk", (1, 7, 2, 4), (1, 9, 2, 4)),
]


def _einsum_model(equation: str, sa, sb):
    node = helper.make_node("Einsum", ["a", "b"], ["y"], name="/attn/Einsum", equation=equation)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, sa),
                                            helper.make_tensor_value_info("b", TensorProto.FLOAT, sb)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize(("equation", "sa", "sb"), EQUATIONS)
def test_einsum_spelled_as_matmul_is_the_same_function(equation, sa, sb):
    model = _einsum_model(equation, sa, sb)
    lowered, count = onnx_einsum.lower(model)
    assert count == 1
    assert [n.op_type for n in lowered.graph.node].count("MatMul") == 1
    assert "Einsum" not in {n.op_type for n in lowered.graph.node}
    rng = np.random.default_rng(0)
    feeds = {"a": rng.normal(size=sa).astype(np.float32), "b": rng.normal(size=sb).astype(np.float32)}
    want = np.einsum(equation, feeds["a"], feeds["b"])
    np.testing.assert_allclose(_run(lowered, feeds), want, rtol=1e-5, atol=1e-5)
    assert any(n.op_type == "Einsum" for n in model.graph.node)  # the caller's model is not changed


@pytest.mark.parametrize("equation", ["ii->i", "...ij,...jk->...ik", "ij,jk", "ij,jk,kl->il", "iij,jk->ik"])
def test_einsum_plan_leaves_what_is_not_a_plain_contraction(equation):
    assert onnx_einsum.plan(equation) is None


def test_einsum_plan_of_a_sum_within_one_operand_is_refused():
    assert onnx_einsum.plan("ij,jk->k") is None   # i is summed inside the first operand only
    assert onnx_einsum.plan("ij,jk->ik")["contracted"] == ["j"]


def test_fidelity_compare_sorted_when_layouts_differ():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 3, 4, 5))
    assert tflite_fidelity.compare(ref, ref.transpose(0, 2, 3, 1)) > 100  # same values, channels last
    assert tflite_fidelity.compare(ref, ref[:, :, :2]) == -np.inf          # not even the same size
    noisy = ref + rng.normal(size=ref.shape)
    assert tflite_fidelity.compare(ref, noisy) < 5


@pytest.fixture(scope="module")
def attention_tflite(tmp_path_factory):
    """(ONNX path, its FP32 .tflite, samples): a tiny self-attention block written with torch.einsum, converted."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx2tf")
    pytest.importorskip("ai_edge_litert")
    from edgepack.backends import onnx as onnx_backend
    from edgepack.backends import tflite

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 4, 4)
            self.qkv = torch.nn.Linear(8, 24)
            self.head = torch.nn.Linear(8, 5)

        def forward(self, x):
            t = self.stem(x).flatten(2).transpose(1, 2)                 # (1, 16, 8) tokens
            q, k, v = self.qkv(t).reshape(1, 16, 3, 2, 4).permute(2, 0, 3, 1, 4)
            att = torch.einsum("bhid,bhjd->bhij", q, k).softmax(-1)
            out = torch.einsum("bhij,bhjd->bhid", att, v).transpose(1, 2).reshape(1, 16, 8)
            return self.head(out.mean(1))

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fidelity")
    raw, path = root / "raw.onnx", root / "attn.onnx"
    onnx_backend.export(Attention().eval(), (1, 3, 16, 16), raw, opset=17)
    onnx_backend.simplify(raw, path)
    assert any(n.op_type == "Einsum" for n in onnx.load(str(path)).graph.node)
    fp32 = tflite.convert(path, root / "work", None)
    samples = np.random.default_rng(1).normal(size=(4, 3, 16, 16)).astype(np.float32)
    return path, fp32, samples


def test_fidelity_of_an_einsum_attention_block(attention_tflite):
    path, fp32, samples = attention_tflite
    record = tflite_fidelity.check(path, fp32, samples)
    assert record["samples"] == 4
    assert min(record["outputs"].values()) > tflite_fidelity.MIN_SQNR_DB


def test_fidelity_stops_a_tflite_that_computes_another_function(attention_tflite, tmp_path):
    path, fp32, samples = attention_tflite
    other = onnx.load(str(path))
    for init in other.graph.initializer:  # the same graph with other weights: another function
        if init.data_type == TensorProto.FLOAT and len(init.dims) >= 2:
            values = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(values[::-1].copy(), init.name))
    moved = tmp_path / "other.onnx"
    onnx.save(other, str(moved))
    with pytest.raises(StageError, match="does not compute what the ONNX model does"):
        tflite_fidelity.check(moved, fp32, samples)


def test_first_divergence_names_the_first_node_that_differs(attention_tflite, tmp_path, monkeypatch):
    """onnx2tf's model stood in by ONNX Runtime's own outputs, wrong from the Softmax on: that node is named."""
    from edgepack.backends import tflite

    path, _, samples = attention_tflite

    def fake_keras(probe, scratch, calib):
        session = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
        outs = session.run(None, {"input": samples[:1]})
        nodes = onnx.load(str(probe)).graph.node
        bad = next(i for i, n in enumerate(nodes) if n.op_type == "Softmax")
        wrong = {o for n in nodes[bad:] for o in n.output}
        names = [o.name for o in session.get_outputs()]
        return lambda x: [o + 1.0 if name in wrong else o for name, o in zip(names, outs, strict=True)]

    monkeypatch.setattr(tflite, "_onnx2tf_keras", fake_keras)
    node = tflite_fidelity.first_divergence(path, tmp_path, samples[:1])
    softmax = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Softmax")
    assert node == softmax


def test_onnx2tf_is_given_einsums_as_matmuls(attention_tflite, tmp_path):
    from edgepack.backends import tflite

    path, _, _ = attention_tflite
    given = tflite._for_onnx2tf(path, tmp_path / "scratch")
    assert given != path
    ops = {n.op_type for n in onnx.load(str(given)).graph.node}
    assert "MatMul" in ops and "Einsum" not in ops
