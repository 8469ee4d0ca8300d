import pickle

import pytest
import torch

from edgepack.errors import InputError
from edgepack.inputs import sources


def test_torchvision_with_weights_loads_weights_only(tmp_path):
    import torchvision

    model = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = sources.load("torchvision:mobilenet_v3_small", weights=str(tmp_path / "w.pt"), num_classes=5)
    assert loaded.kind == "torch" and len(loaded.weights_sha256) == 64
    assert torch.equal(loaded.module.classifier[-1].weight, model.classifier[-1].weight)


def test_unknown_torchvision_arch_suggests(tmp_path):
    with pytest.raises(InputError, match="did you mean 'resnet18'"):
        sources.load("torchvision:resnet81")


@pytest.mark.parametrize("arch,kind", [("deeplabv3_mobilenet_v3_large", "segmentation"),
                                       ("ssdlite320_mobilenet_v3_large", "detection")])
def test_torchvision_model_that_is_not_a_classifier_is_named_with_a_factory_hint(arch, kind):
    """deeplabv3_mobilenet_v3_large got "did you mean 'mobilenet_v3_large'?" and "classification models only"."""
    with pytest.raises(InputError) as err:
        sources.load(f"torchvision:{arch}")
    assert f"torchvision {kind} model" in err.value.message and "did you mean" not in err.value.message
    assert f"torchvision.models.{kind}.{arch}(weights=None, weights_backbone=None" in err.value.hint


def test_weights_for_the_wrong_head_say_num_classes(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "w.pt")
    with pytest.raises(InputError) as err:
        sources.load("torchvision:resnet18", weights=str(tmp_path / "w.pt"))
    assert "do not fit the architecture" in err.value.message and "--num-classes" in err.value.hint


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused_as_weights(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"w": Evil()}, fh)
    with pytest.raises(InputError, match="not just weights|cannot read weights"):
        sources.load("toy_models:tiny_cnn", weights=str(tmp_path / "evil.pt"))


def test_a_file_that_is_not_torch_save_output_is_said_to_be_so(tmp_path):
    """A text file given as --weights is not "pickled objects" (the message it got), it is not weights at all."""
    (tmp_path / "w.pt").write_text("garbage")
    with pytest.raises(InputError, match="is not a PyTorch weights file") as err:
        sources.load("toy_models:tiny_cnn", weights=str(tmp_path / "w.pt"))
    assert "torch.save" in err.value.hint


def test_torchscript_needs_trust(tmp_path):
    import toy_models

    torch.jit.trace(toy_models.tiny_cnn(), torch.zeros(1, 3, 32, 32)).save(str(tmp_path / "m.pt"))
    with pytest.raises(InputError, match="can run code"):
        sources.load(str(tmp_path / "m.pt"))
    assert sources.load(str(tmp_path / "m.pt"), trust_model=True).kind == "torch"


def test_state_dict_given_as_model_is_explained(tmp_path):
    import toy_models

    torch.save(toy_models.tiny_cnn().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(InputError) as err:
        sources.load(str(tmp_path / "sd.pt"))
    assert "--weights" in err.value.hint


def test_pt2_program_loads(tmp_path):
    import toy_models

    program = torch.export.export(toy_models.tiny_cnn(), (torch.zeros(1, 3, 32, 32),))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    loaded = sources.load(str(tmp_path / "m.pt2"))
    assert loaded.module(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("suffix, content, message", [
    (".onnx", b"\x08\x07garbage" * 10, "not a valid ONNX model"),
    (".pt2", b"PK\x03\x04truncated", "not a torch.export program"),
    (".pt", b"hello", "not a TorchScript archive"),
    (".onnx", b"", "is empty"),
])
def test_corrupt_model_files(tmp_path, suffix, content, message):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        sources.load(str(path))


def test_factory_that_is_not_a_module():
    with pytest.raises(InputError, match="cannot import factory"):
        sources.load("no_such_module_xyz:make")


def test_torchvision_googlenet_builds_without_torchvisions_future_warning():
    """`edgepack build torchvision:googlenet` printed torchvision's FutureWarning about its default weight init
    (a raw Python warning, nothing the user can act on) before edgepack's own output."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sources.load("torchvision:googlenet", num_classes=10)
    assert not [w for w in seen if issubclass(w.category, FutureWarning)]


def test_torchvision_random_weights_are_the_same_every_build():
    """Without --weights the random init is the model; it was unseeded, so the same command built another model
    each time (mnasnet0_5 for android-arm64: agreement 1.0, then 0.81). The caller's generator is left alone."""
    state = torch.random.get_rng_state()
    a = sources.load("torchvision:squeezenet1_1", num_classes=4).module.state_dict()
    b = sources.load("torchvision:squeezenet1_1", num_classes=4).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("wrap", ["dataparallel", "compiled", "checkpoint"])
def test_weights_saved_through_a_wrapper_or_in_a_checkpoint_load(wrap, tmp_path):
    """nn.DataParallel saves module.conv.weight, torch.compile _orig_mod.conv.weight, training scripts
    {"epoch": 3, "model_state_dict": {...}}: all failed with a cut "Missing key(s)" message."""
    import torch
    import toy_models

    state = toy_models.tiny_cnn().state_dict()
    saved = {"dataparallel": {f"module.{k}": v for k, v in state.items()},
             "compiled": {f"_orig_mod.{k}": v for k, v in state.items()},
             "checkpoint": {"epoch": 3, "model_state_dict": state}}[wrap]
    torch.save(saved, tmp_path / "w.pt")
    model = toy_models.TinyCNN()
    sources.load_weights(model, str(tmp_path / "w.pt"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_a_generic_factory_name_names_the_bundle_after_its_module():
    from edgepack.inputs.sources import factory_name as _factory_name

    assert _factory_name("mynets.digits", "create") == "digits"  # it was "create for raspberry-pi-4"
    assert _factory_name("examples.ssdlite_shapes.model", "create_model") == "ssdlite_shapes"
    assert _factory_name("toy_models", "tiny_cnn") == "tiny_cnn"


def test_a_factory_that_needs_arguments_says_so():
    """def make(num_classes) was reported as an error 'in the factory's code, not in edgepack'; a TypeError raised
    inside a factory of no arguments is still the factory's own."""
    from edgepack.guards import usercode

    def make(num_classes):
        return num_classes

    def broken():
        return len(5)

    with pytest.raises(InputError, match="factory 'm:make' needs arguments") as info:
        usercode.call_factory("m:make", make)
    assert "defaults" in info.value.hint
    with pytest.raises(InputError, match="factory 'm:broken' raised TypeError") as info:
        usercode.call_factory("m:broken", broken)
    assert "factory's code" in info.value.hint
