"""Pruning attention heads and FFN neurons of a tiny random BERT: shapes shrink, outputs survive ONNX."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from toy_models import export_text  # noqa: E402

from edgepack.errors import InputError  # noqa: E402
from edgepack.pruning.transformer import count, heads_to_keep, neurons_to_keep, prune_transformer  # noqa: E402

L = 12


class Classifier(torch.nn.Module):
    """forward(input_ids, attention_mask, token_type_ids) -> logits, as edgepack calls text models."""

    def __init__(self, heads: int = 4, ffn: int = 64):
        super().__init__()
        torch.manual_seed(0)
        cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=heads,
                                      intermediate_size=ffn, max_position_embeddings=32, num_labels=3)
        self.bert = transformers.BertForSequenceClassification(cfg).eval()

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def _inputs(n: int = 1):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (n, L), generator=g)
    mask = torch.ones_like(ids)
    mask[:, -3:] = 0
    return ids, mask, torch.zeros_like(ids)


def test_heads_and_ffn_shrink_and_the_source_is_left_alone():
    model = Classifier()
    pruned, layers = prune_transformer(model, 0.5, round_to=8)
    shapes = [(c["heads_before"], c["heads_after"], c["ffn_before"], c["ffn_after"]) for c in layers]
    assert shapes == [(4, 2, 64, 32)] * 2
    for layer in pruned.bert.bert.encoder.layer:
        assert layer.attention.self.num_attention_heads == 2 and layer.attention.self.all_head_size == 16
        assert layer.attention.self.query.weight.shape == (16, 32)
        assert layer.attention.output.dense.weight.shape == (32, 16)
        assert layer.intermediate.dense.weight.shape == (32, 32) and layer.output.dense.weight.shape == (32, 32)
    assert model.bert.bert.encoder.layer[0].intermediate.dense.out_features == 64  # the input model is untouched
    before, after = count(model, _inputs()), count(pruned, _inputs())
    assert after["params"] < before["params"] and after["macs"] < 0.7 * before["macs"]


def test_least_important_head_goes_first():
    model = Classifier()
    layer = model.bert.bert.encoder.layer[0]
    with torch.no_grad():  # head 1 of layer 0 gets tiny weights everywhere
        for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
            lin.weight[8:16] *= 1e-3
        layer.attention.output.dense.weight[:, 8:16] *= 1e-3
    pruned, _ = prune_transformer(model, 0.25)
    assert pruned.bert.bert.encoder.layer[0].attention.pruned_heads == {1}


def test_pruned_model_exports_to_onnx_and_matches_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pruned, _ = prune_transformer(Classifier(), 0.5)
    export_text(pruned, L, tmp_path / "m.onnx")
    ids, mask, types = _inputs()
    out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(
        None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()})[0]
    with torch.no_grad():
        ref = pruned(ids, mask, types).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_keep_counts_and_models_without_encoder_layers():
    assert heads_to_keep(12, 0.4) == 7 and heads_to_keep(2, 0.9) == 1 and heads_to_keep(4, 0.0) == 4
    assert neurons_to_keep(1536, 0.4, 8) == 920 and neurons_to_keep(8, 0.5, 8) == 8
    assert neurons_to_keep(64, 0.99, 8) == 8
    with pytest.raises(InputError, match="no transformer encoder layers"):
        prune_transformer(torch.nn.Linear(4, 2), 0.5)


class DistilClassifier(torch.nn.Module):
    """A tiny random DistilBERT classifier: attention q_lin/k_lin/v_lin/out_lin, ffn.lin1/lin2 (no token types)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        cfg = transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                            max_position_embeddings=32, num_labels=3)
        self.model = transformers.DistilBertForSequenceClassification(cfg).eval()

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_distilbert_layers_prune_heads_and_ffn(importance):
    """DistilBERT was "no transformer encoder layers found to prune": its layers name their parts otherwise."""
    from edgepack.pruning.transformer import taylor_scores

    model = DistilClassifier()
    ids, mask, _ = _inputs(8)
    scores = taylor_scores(model, (ids, mask)) if importance == "taylor" else None
    pruned, layers = prune_transformer(model, 0.5, round_to=8, scores=scores)
    shapes = [(c["heads_before"], c["heads_after"], c["ffn_before"], c["ffn_after"]) for c in layers]
    assert shapes == [(4, 2, 64, 32)] * 2
    for layer in pruned.model.distilbert.transformer.layer:
        assert layer.attention.n_heads == 2 and layer.attention.q_lin.weight.shape == (16, 32)
        assert layer.ffn.lin1.weight.shape == (32, 32) and layer.ffn.lin2.weight.shape == (32, 32)
    with torch.no_grad():
        out = pruned(ids, mask)
    assert out.shape == (8, 3) and torch.isfinite(out).all()
    assert model.model.distilbert.transformer.layer[0].ffn.lin1.out_features == 64  # the input model is untouched
