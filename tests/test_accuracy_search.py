"""Accuracy-aware INT8 on a model that plain post-training INT8 breaks (see toy_models.inject_outlier)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import toy_models
from click.testing import CliRunner

from edgepack.cli import main


@pytest.fixture(scope="module")
def outlier_model(digits, tmp_path_factory) -> dict[str, Path]:
    """OutlierNet trained on digits (seconds), then given a x256 outlier channel; FP32 outputs unchanged."""
    d = tmp_path_factory.mktemp("outlier")
    torch.manual_seed(0)
    model = toy_models.OutlierNet().train()
    x = torch.from_numpy(np.load(digits["calib"])["x"])
    data = np.load(digits["dir"] / "val.npz")
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    train_x = torch.from_numpy(np.load(digits["dir"] / "train.npz")["x"])
    train_y = torch.from_numpy(np.load(digits["dir"] / "train.npz")["y"])
    for _ in range(40):
        for i in range(0, len(train_x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(train_x[i:i + 64]), train_y[i:i + 64]).backward()
            opt.step()
    model.eval()
    before = model(x).detach()
    toy_models.inject_outlier(model)
    assert torch.allclose(model(x).detach(), before, atol=1e-3)  # the change is invisible in FP32
    torch.save(model.state_dict(), d / "outlier.pt")
    assert data["y"].shape[0] > 400
    return {"weights": d / "outlier.pt"}


def _build(out: Path, weights: Path, digits, *extra: str, target: str = "x86-64", runs: str = "5"):
    return CliRunner().invoke(main, ["build", "toy_models:outlier_net", "--weights", str(weights), "--target",
                                     target, "--input-shape", "1,1,16,16", "--calib", str(digits["calib"]),
                                     "--val", str(digits["val"]), "--out", str(out), "--latency-runs", runs,
                                     "--max-accuracy-drop", "1.0", "--json", *extra])


def _build_tflite(out: Path, weights: Path, digits, *extra: str):
    """The outlier model to full-integer TFLite for android-arm64, the device stage off."""
    return _build(out, weights, digits, "--no-emulate", *extra, target="android-arm64", runs="3")


def test_plain_int8_loses_more_than_two_points(outlier_model, digits, tmp_path):
    result = _build(tmp_path / "plain", outlier_model["weights"], digits, "--max-search-time", "0")
    assert result.exit_code == 1, result.output  # the budget is missed and the bundle says so
    v = json.loads(result.stdout)["models"][0]["validation"]
    assert v["accuracy_fp32"] > 80 and v["accuracy_drop"] > 2.0, v


def test_accuracy_aware_build_meets_one_point_and_reports_the_cost(outlier_model, digits, tmp_path):
    out = tmp_path / "searched"
    result = _build(out, outlier_model["weights"], digits)
    assert result.exit_code == 0, result.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["validation"]["accuracy_drop"] <= 1.0
    search = man["stages"]["quantization_search"]
    assert search["trials"][0]["name"] == "default recipe" and not search["trials"][0]["met"]
    chosen = [t for t in search["trials"] if t["name"] == search["chosen"]][0]
    assert chosen["met"] and chosen["latency_p50_ms_1thread"] > 0 and chosen["size_bytes"] > 0
    report = (out / "report.md").read_text()
    assert "Accuracy-aware search" in report and search["chosen"] in report
    # the x256 channel's activation is what INT8 cannot hold: kept unrounded, it is the first fix that meets
    assert search["chosen"] == "1 costliest activation(s) unrounded", search["trials"]
    costly = man["stages"]["diagnosis"]["costly_activations"]
    assert chosen["settings"]["unrounded"] == [costly[0]["tensor"]]
    assert "Activations kept unrounded" in report and f"`{costly[0]['tensor']}`" in report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4  # quality, latency, size, search, per-layer


def test_report_html_renders_its_plots_in_headless_chromium(outlier_model, digits, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (scripts/setup-env.sh installs it)")
    out = tmp_path / "b"
    assert _build(out, outlier_model["weights"], digits, "--max-search-time", "0").exit_code in (0, 1)
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1000,2600",
                    f"--screenshot={shot}", (out / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    blue = np.abs(pixels - [0x2B, 0x7B, 0xB9]).sum(1) < 30     # the INT8 bars
    red = np.abs(pixels - [0xC4, 0x4E, 0x52]).sum(1) < 30      # the per-layer error bars
    assert blue.sum() > 500 and red.sum() > 200, (blue.sum(), red.sum())


def test_a_trial_past_the_time_limit_is_recorded_as_stopped_and_never_chosen(tmp_path):
    """search.run passes its deadline to each trial; a trial that raises TimeLimitReached ends the search, is
    listed as stopped, and the best scored trial is handed over."""
    from edgepack.errors import TimeLimitReached
    from edgepack.quantize import search

    deadlines = []

    def quantize(settings, path, deadline):
        deadlines.append(deadline)
        if settings.get("method") == "entropy":
            raise TimeLimitReached("stopped")
        path.write_text(settings["method"])
        return {}

    default = search.Trial("default recipe", {}, {"agreement": 0.90}, 10, None, 1.0, False, path=tmp_path / "d")
    space = search.SearchSpace(method="minmax", per_channel=True, more_calib=lambda: None,
                               diagnose=lambda p: pytest.fail("the search went on after the stopped trial"),
                               weight_rounding="gptq")  # already learned: the search starts with the methods
    evaluate = lambda p: {"agreement": {"percentile": 0.93}[p.read_text()], "sqnr_db": 20.0}  # noqa: E731
    chosen, trials, _ = search.run(quantize, evaluate, lambda q: False, space, tmp_path, lambda p: 1.0, 300,
                                   default)
    assert [t.name for t in trials] == ["default recipe", "percentile calibration", "entropy calibration"]
    assert trials[-1].stopped and trials[-1].row()["stopped"] == "time limit"
    assert chosen.name == "percentile calibration"
    assert len(deadlines) == 2 and all(d is not None for d in deadlines)
    # histogram methods calibrate on an evenly spread subset; the report shows its size
    assert trials[1].raw_settings["max_calib"] == search.HISTOGRAM_TRIAL_SAMPLES
    assert trials[1].settings == {"method": "percentile", "calibration_samples": search.HISTOGRAM_TRIAL_SAMPLES}


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path):
    """A candidate whose quantization raises (ORT's percentile calibrator on efficientnet_v2_s raised ValueError,
    which ended the build with exit 70) is listed as failed with its error; the search tries the next one and
    ships the best that scored. An interrupt still ends the search."""
    from edgepack.bundle.tables import trial_rows
    from edgepack.errors import Interrupted
    from edgepack.quantize import search

    def quantize(settings, path, deadline):
        if settings.get("method") == "percentile":
            raise ValueError("Maximum allowed size exceeded")
        path.write_text(settings["method"])
        return {}

    default = search.Trial("default recipe", {}, {"agreement": 0.90}, 10, None, 1.0, False, path=tmp_path / "d")
    space = search.SearchSpace(method="minmax", per_channel=True, more_calib=lambda: None,
                               diagnose=lambda p: [], weight_rounding="gptq")
    evaluate = lambda p: {"agreement": {"entropy": 0.93}[p.read_text()], "sqnr_db": 20.0}  # noqa: E731
    chosen, trials, _ = search.run(quantize, evaluate, lambda q: False, space, tmp_path, lambda p: 1.0, 300,
                                   default)
    assert [t.name for t in trials] == ["default recipe", "percentile calibration", "entropy calibration"]
    assert trials[1].failed == "ValueError: Maximum allowed size exceeded" and not trials[1].met
    assert chosen.name == "entropy calibration"
    rows = trial_rows({"chosen": chosen.name, "trials": [t.row() for t in trials]})
    assert rows[1][-1] == "failed: ValueError: Maximum allowed size exceeded"

    def interrupted(settings, path, deadline):
        raise Interrupted("interrupted")

    with pytest.raises(Interrupted):
        search.run(interrupted, evaluate, lambda q: False, space, tmp_path, lambda p: 1.0, 300, default)


def test_a_generic_model_below_its_sqnr_floor_is_searched_too(outlier_model, digits, tmp_path):
    """A generic model's only quality budget is the SQNR floor on its outputs; the search counted it as met
    (no accuracy budget), so PP-OCRv4's recogniser shipped at 9.2 dB against the 10 dB floor, never searched.
    The trials are now held to the floor and ranked by SQNR."""
    out = tmp_path / "generic"
    result = _build(out, outlier_model["weights"], digits, "--task", "generic", "--min-output-sqnr-db", "30",
                    "--max-search-time", "60")
    assert result.exit_code in (0, 1), result.output
    search = json.loads((out / "manifest.json").read_text())["stages"]["quantization_search"]
    default, chosen = search["trials"][0], [t for t in search["trials"] if t["name"] == search["chosen"]][0]
    assert default["name"] == "default recipe" and not default["met"] and len(search["trials"]) > 1
    assert chosen["sqnr_db"] > default["sqnr_db"]


def test_tflite_search_keeps_the_costliest_activation_unrounded(outlier_model, digits, tmp_path):
    """Full-integer TFLite: one activation scale per tensor breaks the outlier channel as in ONNX. The TFLite trials
    rank the activations by their cost at the outputs as the ONNX search does, and the first variant (the
    costliest one unrounded: the op writing it and the ops reading it in float, the rest as the all-INT8 file)
    meets the budget; the debugger's float-op variants are then not needed."""
    out = tmp_path / "tflite"
    result = _build_tflite(out, outlier_model["weights"], digits)
    assert result.exit_code == 0, result.output
    man = json.loads((out / "manifest.json").read_text())
    record = man["stages"]["quantization_tflite"]
    unrounded = record["unrounded_activations"]
    assert [t["unrounded"] for t in unrounded["trials"]] == [0, 1] and unrounded["shipped"] == 1, unrounded
    assert not unrounded["trials"][0]["budget"]["passed"] and unrounded["trials"][1]["budget"]["passed"]
    # the outlier activation ranks first, as in the ONNX search (test_costly_activations)
    assert unrounded["tensors"] == [unrounded["ranked"][0]["tensor"]] and len(unrounded["ranked"]) > 1
    assert unrounded["ranked"][0]["output_sqnr_db"] < unrounded["ranked"][1]["output_sqnr_db"] - 10
    assert unrounded["float_ops"] and not record["float_ops"], record  # asked for, not "could not quantize"
    assert "float_layers" not in record
    assert man["validation"]["accuracy_drop"] == pytest.approx(unrounded["trials"][1]["budget"]["value"], abs=0.01)
    assert record["weight_rounding"]["method"] != "gptq" or record["weight_rounding"].get("learned_layers")
    report = (out / "report.md").read_text()
    assert "activations kept unrounded (costliest first)" in report and unrounded["tensors"][0] in report


def test_tflite_search_keeps_the_ops_int8_hurts_most_in_float(outlier_model, digits, tmp_path, monkeypatch):
    """Full-integer TFLite: one activation scale per tensor breaks the outlier channel as in ONNX; the search's
    last TFLite trial keeps the ops TensorFlow's QuantizationDebugger finds worst in float, and ships the first
    variant that meets the budget (here with the unrounded-activation trial, which would meet it first, off)."""
    from edgepack.stages import quantize

    monkeypatch.setattr(quantize, "TFLITE_UNROUNDED_STEPS", ())
    out = tmp_path / "tflite"
    result = _build_tflite(out, outlier_model["weights"], digits)
    assert result.exit_code in (0, 1), result.output
    man = json.loads((out / "manifest.json").read_text())
    record = man["stages"]["quantization_tflite"]
    mixed = record["float_layers"]
    first = mixed["trials"][0]
    assert first["float_layers"] == 0 and not first["budget"]["passed"], mixed
    # the worst op (conv1, whose output the outlier channel starves) with the ops reading its output: one step
    assert mixed["shipped"] == 1 and len(mixed["layers"]) > 1 and mixed["float_ops"], mixed
    shipped = [t for t in mixed["trials"] if t["float_layers"] == mixed["shipped"]][0]
    assert shipped["budget"]["passed"] and man["validation"]["accuracy_drop"] <= 1.0
    assert man["validation"]["accuracy_drop"] == pytest.approx(shipped["budget"]["value"], abs=0.01)
    assert not record["float_ops"]  # the float ops chosen are not reported as ones the converter could not quantize
    from ai_edge_litert.interpreter import Interpreter

    names = [t["name"] for t in Interpreter(model_path=str(out / "model.tflite")).get_tensor_details()]
    assert names and not any(";" in n for n in names)   # written as the all-INT8 file is: compacted
    assert record["fp32_fidelity"]["outputs"]["logits"] > 40
    report = (out / "report.md").read_text()
    assert "variants kept the ops INT8 hurts most in float" in report and mixed["float_ops"][0] in report


def test_tflite_float_op_variants_stop_at_the_size_budget(outlier_model, digits, tmp_path):
    """A variant keeps float weights, so its file grows: past the size budget it cannot ship, and the larger ones
    are not tried. All-INT8 ships, with a warning that says why (an EfficientNet-Lite0 whose every op had been
    kept in float shipped as "INT8" at 1.00x the FP32 file before)."""
    out = tmp_path / "tflite"
    result = _build_tflite(out, outlier_model["weights"], digits, "--max-size-mb", "0.000001")
    assert result.exit_code == 1, result.output
    man = json.loads((out / "manifest.json").read_text())
    mixed = man["stages"]["quantization_tflite"]["float_layers"]
    assert mixed["shipped"] == 0 and not mixed["layers"], mixed
    assert [t["float_layers"] for t in mixed["trials"]] == [0, 1] and mixed["trials"][1]["over_size_budget"]
    assert mixed["trials"][1]["budget"] is None  # not validated: its size alone rules it out
    assert any("over the 1e-06 MB size budget, so all-INT8 ships" in w for w in man["warnings"]), man["warnings"]
    assert "no (over the size budget)" in (out / "report.md").read_text()


def test_tflite_trials_stop_when_the_search_time_is_spent(outlier_model, digits, tmp_path, monkeypatch):
    """The TFLite trials (another hard-swish spelling, learned rounding, float-op variants) share
    --max-search-time, counted from the first: with the clock past it after that one, the others are not started,
    and the manifest and a warning name them. They used to run to the end whatever the limit."""
    from edgepack.stages import quantize

    ticks = iter(range(0, 10**6, 1000))  # every reading of the clock is 1000 s after the one before
    monkeypatch.setattr(quantize, "_now", lambda: float(next(ticks)))
    out = tmp_path / "tflite"
    result = _build_tflite(out, outlier_model["weights"], digits, "--max-search-time", "60")
    assert result.exit_code == 1, result.output
    man = json.loads((out / "manifest.json").read_text())
    record = man["stages"]["quantization_tflite"]
    # learned rounding ran (the first trial starts the clock); the float-op variants did not
    assert [t["weight_rounding"] for t in record["weight_rounding"]["trials"]] == ["nearest", "gptq"], record
    assert record["search_stopped"] == ["activations unrounded", "ops in float"] and "float_layers" not in record
    assert "unrounded_activations" not in record
    assert any("60 s search time (--max-search-time) ran out; not tried: activations unrounded, ops in float" in w
               for w in man["warnings"]), man["warnings"]


def test_a_trial_over_the_size_budget_is_not_chosen_and_the_search_goes_on(tmp_path):
    """A configuration that meets the accuracy budget with a file over the size budget (float weights grow it)
    is no answer: it is marked, never chosen, and the search tries the next one. When the default recipe's file
    is itself over the budget, size cannot tell candidates apart and is not held against them."""
    from edgepack.bundle.tables import trial_rows
    from edgepack.quantize import search

    def quantize(settings, path, deadline):
        path.write_bytes(b"x" * {"percentile": 50, "entropy": 20}[settings["method"]])
        return {}

    evaluate = lambda p: {"agreement": 0.99 if p.stat().st_size == 50 else 0.97, "sqnr_db": 20.0}  # noqa: E731
    meets = lambda q: q["agreement"] >= 0.96  # noqa: E731
    space = search.SearchSpace(method="minmax", per_channel=True, more_calib=lambda: None,
                               diagnose=lambda p: [], weight_rounding="gptq")

    def default(size):
        (tmp_path / "d").write_bytes(b"x" * size)
        return search.Trial("default recipe", {}, {"agreement": 0.90}, size, None, 1.0, False, path=tmp_path / "d")

    chosen, trials, _ = search.run(quantize, evaluate, meets, space, tmp_path, lambda p: 1.0, 300, default(20),
                                   max_bytes=30)
    assert [t.name for t in trials] == ["default recipe", "percentile calibration", "entropy calibration"]
    assert trials[1].over_size and not trials[1].met and trials[1].row()["over_size_budget"]
    assert chosen.name == "entropy calibration" and chosen.met
    rows = trial_rows({"chosen": chosen.name, "trials": [t.row() for t in trials]})
    assert rows[1][-1] == "over the size budget"
    # without a budget, or with a default already over it, the first that meets wins as before
    for budget, size in ((None, 20), (30, 40)):
        chosen, trials, _ = search.run(quantize, evaluate, meets, space, tmp_path, lambda p: 1.0, 300,
                                       default(size), max_bytes=budget)
        assert chosen.name == "percentile calibration" and not any(t.over_size for t in trials)
