"""Image classifiers saved by transformers (a folder with config.json, model.safetensors and
preprocessor_config.json): loaded offline as image models with the folder's own preprocessing and class names;
it was refused as "not a complete transformers folder: missing tokenizer.json"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.inputs import hf_image

PHOTOS = Path(__file__).resolve().parents[1] / "calibration_data" / "images"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    """A seeded 2-layer ViT at 32 px with five named classes and a processor normalising to [-1, 1]."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    torch.manual_seed(0)
    names = {i: f"kind{i}" for i in range(5)}
    config = ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                       intermediate_size=64, num_labels=5, id2label=names, label2id={v: k for k, v in names.items()})
    ViTForImageClassification(config).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_hf_image_folder_builds_with_its_own_preprocessing_and_names(vit, tmp_path):
    out = tmp_path / "b"
    result = invoke("build", vit, "--target", "x86-64", "--calib", PHOTOS, "--calib-samples", "16", "--out", out,
                    "--json")
    assert result.exit_code in (0, 1), result.output   # random weights: agreement may miss the budget
    man = json.loads((out / "manifest.json").read_text())
    pre = man["preprocess"]
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.5, 0.5, 0.5] and pre["resize"] == pre["crop"] == 32
    assert man["labels"] == [f"kind{i}" for i in range(5)]
    assert man["inputs"][0]["shape"][1:] == [3, 32, 32]
    photo = sorted(PHOTOS.iterdir())[0]
    res = subprocess.run([sys.executable, str(out / "run.py"), str(photo), "--json", "--top", "2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert all(t["name"].startswith("kind") for t in json.loads(res.stdout.splitlines()[-1])["top"])


def test_a_given_mean_wins_over_the_folders_and_is_warned(vit, tmp_path):
    out = tmp_path / "b"
    result = invoke("build", vit, "--target", "x86-64", "--calib", PHOTOS, "--calib-samples", "8", "--mean",
                    "0.4,0.4,0.4", "--out", out, "--json")
    man = json.loads((out / "manifest.json").read_text())
    assert man["preprocess"]["mean"] == [0.4, 0.4, 0.4] and man["preprocess"]["std"] == [0.5, 0.5, 0.5]
    assert any("mean (0.4, 0.4, 0.4) was given" in w and "declares (0.5, 0.5, 0.5)" in w for w in man["warnings"])
    assert result.exit_code in (0, 1)


def test_processor_sizes_map_to_resize_and_crop(tmp_path):
    cases = [({"size": {"shortest_edge": 224}, "crop_pct": 0.875}, {"resize": 256, "crop": 224}),        # ConvNeXt
             ({"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}},
              {"resize": 256, "crop": 224}),                                                            # ResNet/BEiT
             ({"size": {"height": 384, "width": 384}}, {"resize": 384, "crop": 384}),                    # ViT
             ({"size": {"shortest_edge": 224}, "do_normalize": False, "do_rescale": True}, {"resize": 224})]
    for cfg, want in cases:
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
        got = hf_image.preprocessing(tmp_path, 224)
        assert {k: got[k] for k in want} == want and ("crop" in got) == ("crop" in want), (cfg, got)
    assert got["mean"] == (0.0, 0.0, 0.0) and got["std"] == (1.0, 1.0, 1.0) and got["scale"] == pytest.approx(1 / 255)
    # ViT's processor squeezes a photo to height x width; edgepack crops: said, once, for the ViT case only
    notes = {}
    for cfg, _ in cases:
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
        notes[json.dumps(cfg)] = hf_image.preprocessing(tmp_path, 224).get(hf_image.NOTE)
    assert [k for k, v in notes.items() if v] == [json.dumps(cases[2][0])]
    assert "384 x 384 (aspect ratio not kept)" in notes[json.dumps(cases[2][0])]


def test_an_image_folder_without_safetensors_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "image_size": 32, "num_channels": 3}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02")
    result = invoke("build", folder, "--target", "x86-64", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "pickled *.bin weights only: refused" in result.output


@pytest.mark.slow
def test_vision_transformer_converts_to_full_integer_tflite(vit, tmp_path):
    """GELU is Erf below opset 20, which the TFLite converter refuses: an image model with GELU exports at 20."""
    out = tmp_path / "b"
    result = invoke("build", vit, "--target", "android-arm64", "--calib", PHOTOS, "--calib-samples", "16",
                    "--out", out, "--no-emulate", "--json")
    assert result.exit_code in (0, 1), result.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["stages"]["export"]["opset"] == 20
    assert man["models"][0]["format"] == "tflite" and man["models"][0]["inputs"][0]["dtype"] == "int8"


def test_vision_transformer_prunes_heads_and_ffn_neurons(vit, tmp_path):
    """Channel pruning broke a ViT's head reshapes (internal error: shape '[1, -1, 4, 16]' is invalid); its encoder
    layers are pruned as text encoders are: whole heads and FFN neurons."""
    out = tmp_path / "b"
    result = invoke("build", vit, "--target", "x86-64", "--calib", PHOTOS, "--calib-samples", "8", "--prune", "0.5",
                    "--out", out, "--json")
    assert result.exit_code in (0, 1), result.output
    prune = json.loads((out / "manifest.json").read_text())["stages"]["prune"]
    assert prune["kind"] == "transformer heads + FFN"
    assert [(c["heads_before"], c["heads_after"]) for c in prune["layers"]] == [(4, 2), (4, 2)]
    assert prune["params_after"] < prune["params_before"]


def test_prune_says_how_to_build_the_saved_program_with_the_folders_preprocessing(vit, tmp_path):
    """A pruned .pt2 carries no preprocessor_config.json: building it took ImageNet's mean and std without a word.
    `edgepack prune` prints the options that keep the folder's preprocessing, and they parse as build options."""
    saved = tmp_path / "pruned.pt2"
    result = invoke("prune", vit, "--prune", "0.5", "--calib", PHOTOS, "--calib-samples", "8", "--save", saved)
    assert result.exit_code == 0, result.output
    line = [s for s in result.output.splitlines() if s.startswith("build it with the source's preprocessing")][0]
    options = line.split(f"edgepack build {saved} ")[1].split()
    assert options[:2] == ["--input-shape", "1,3,32,32"] and "--mean" in options
    dry = invoke("build", saved, *options, "--target", "x86-64", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    config = json.loads(dry.stdout)["config"]
    assert config["preprocess"]["mean"] == [0.5, 0.5, 0.5] and config["preprocess"]["crop"] == 32
