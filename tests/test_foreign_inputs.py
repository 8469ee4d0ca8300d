"""Models, photos and runner inputs from outside edgepack's own examples, as a new user brings them: an ONNX file
with a channels-last (NHWC) image input, as tf2onnx writes a Keras model; a --file list for run.py with a corrupt
photo in it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgepack.backends import onnx as onnx_backend
from edgepack.backends import onnx_layout
from edgepack.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--latency-runs", "3", "--target", "x86-64", "--max-search-time", "0"]


def nhwc_classifier(shape=(1, 32, 32, 3)) -> onnx.ModelProto:
    """tf2onnx's shape of a Keras classifier: input (N, H, W, 3), a Transpose to NCHW, conv-relu-pool-matmul."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(0, 0.3, (8, 10)).astype(np.float32), "fc")
    nodes = [helper.make_node("Transpose", ["images"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 10])], [w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # what onnxruntime 1.23 reads
    return model


def test_an_nhwc_input_is_told_apart_from_nchw():
    assert onnx_layout.is_nhwc_image([1, 224, 224, 3]) and onnx_layout.is_nhwc_image(["N", "H", "W", 1])
    assert not onnx_layout.is_nhwc_image([1, 3, 224, 224]) and not onnx_layout.is_nhwc_image(["N", 3, "H", "W"])
    assert not onnx_layout.is_nhwc_image([1, 224, 224, 3], "uint8") and not onnx_layout.is_nhwc_image([1, 50, 3])


def test_prepare_source_makes_an_nhwc_input_nchw_with_the_same_outputs(tmp_path):
    """Its dynamic H and W are pinned in NCHW order, and the model computes what the file did."""
    onnx.save(nhwc_classifier(("N", "H", "W", 3)), tmp_path / "src.onnx")
    assert onnx_backend.input_shape(tmp_path / "src.onnx") is None
    done = onnx_backend.prepare_source(tmp_path / "src.onnx", tmp_path / "out.onnx", input_shape=(1, 3, 24, 40),
                                       opset=17)
    assert done["input_layout_from"] == {"layout": "NHWC", "shape": ["N", "H", "W", 3]}
    assert onnx_backend.io_details(tmp_path / "out.onnx")["inputs"][0]["shape"] == [1, 3, 24, 40]
    x = np.random.default_rng(1).normal(size=(1, 3, 24, 40)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "out.onnx")).run(None, {"images": x})[0]
    want = ort.InferenceSession(str(tmp_path / "src.onnx")).run(None, {"images": x.transpose(0, 2, 3, 1)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def nhwc_bundle(tmp_path_factory) -> tuple[Path, str]:
    """(bundle, build output) of the NHWC classifier built from photos."""
    tmp = tmp_path_factory.mktemp("nhwc")
    photos = tmp / "photos"
    photos.mkdir()
    for f in sorted((ROOT / "calibration_data" / "images").glob("*.jpg"))[:8]:
        (photos / f.name).write_bytes(f.read_bytes())
    onnx.save(nhwc_classifier(), tmp / "keras.onnx")
    res = CliRunner().invoke(main, ["build", str(tmp / "keras.onnx"), "--calib", str(photos), "--out",
                                    str(tmp / "b"), *FAST])
    assert res.exit_code in (0, 1), res.output
    return tmp / "b", res.output


def test_an_nhwc_onnx_file_builds_from_photos(nhwc_bundle):
    """It was refused ("input shape 1,32,32,3 has 32 channels"), and the hint's --input-shape 1,3,32,32 then failed
    as "does not fit"."""
    bundle, output = nhwc_bundle
    assert "takes its image channels-last (NHWC [1, 32, 32, 3])" in output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 3, 32, 32]
    assert manifest["stages"]["onnx_source"]["input_layout_from"]["layout"] == "NHWC"
    assert not any(n.op_type == "Transpose" for n in onnx.load(str(bundle / "model.onnx")).graph.node)


def test_run_py_file_goes_on_past_an_unreadable_photo(nhwc_bundle, tmp_path):
    """One corrupt photo in a --file list stopped the run there (exit 2), and --out saved nothing."""
    bundle, _ = nhwc_bundle
    photo = sorted((ROOT / "calibration_data" / "images").glob("*.jpg"))[0]
    (tmp_path / "empty.jpg").write_bytes(b"")
    # saved by Windows Notepad: a byte-order mark (it made the first path "\ufeff/..." a missing file) and CRLF
    (tmp_path / "list.txt").write_bytes(f"\ufeff{photo}\r\n{tmp_path / 'empty.jpg'}\r\n{photo}\r\n".encode())
    proc = subprocess.run([sys.executable, str(bundle / "run.py"), "--file", str(tmp_path / "list.txt"), "--out",
                           str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "1 of 3 inputs" in proc.stderr and "Traceback" not in proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3] and "error" in rows[1] and rows[2]["top"] == rows[0]["top"]
    with np.load(tmp_path / "out.npz") as saved:
        assert saved["line"].tolist() == [1, 3] and saved["output0"].shape == (2, 10)


def test_the_npz_hint_for_an_input_named_like_tf2onnx_is_valid_python(tmp_path, image_folder):
    """An input named "input_1:0" (tf2onnx) or "onnx::Cast_0" was told to numpy.savez(path, input_1:0=...), a
    syntax error."""
    cast = [helper.make_node("Cast", ["input_1:0"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["f"], ["y"], keepdims=0)]
    graph = helper.make_graph(cast, "g", [helper.make_tensor_value_info("input_1:0", TensorProto.UINT8, [1, 8, 8, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "u8.onnx")
    res = CliRunner().invoke(main, ["build", str(tmp_path / "u8.onnx"), "--calib", str(image_folder), "--out",
                                    str(tmp_path / "b"), *FAST])
    assert res.exit_code == 2, res.output
    call = res.output.split("numpy.savez(", 1)[1].split("[, y=labels]")[0]
    compile(f"numpy.savez({re.sub(r'<[^>]*>', '0', call)})", "hint", "eval")  # a SyntaxError before the fix
    assert "'input_1:0'" in call


@pytest.mark.parametrize("shape,said", [("1,3,32", "has 3 dimensions"), ("2,3,32,32", "has a batch of 2")])
def test_an_input_shape_that_is_not_one_image_is_refused_first(tmp_path, image_folder, shape, said):
    """A 3-D --input-shape reached the photo reader as an internal error (exit 70); a batch of 2 was exported and
    then failed on the first calibration sample (exit 4)."""
    onnx.save(nhwc_classifier(("N", "H", "W", 3)), tmp_path / "m.onnx")
    res = CliRunner().invoke(main, ["build", str(tmp_path / "m.onnx"), "--calib", str(image_folder),
                                    "--input-shape", shape, "--out", str(tmp_path / "b"), *FAST])
    assert res.exit_code == 2 and said in res.output and "Hint: " in res.output, res.output
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("extra,said", [(["--resize", "24"], "--resize 24 is smaller than the 32-pixel centre crop "
                                                               "(the input height)"),
                                         (["--resize", "40", "--crop", "48"], "--resize 40 is smaller than the 48")])
def test_a_resize_smaller_than_the_crop_is_refused(tmp_path, image_folder, extra, said):
    """The centre crop did not fit in the resized photo: each photo was stretched to it along its short side, out of
    shape, without a word (here and in run.py)."""
    onnx.save(nhwc_classifier(("N", "H", "W", 3)), tmp_path / "m.onnx")
    res = CliRunner().invoke(main, ["build", str(tmp_path / "m.onnx"), "--calib", str(image_folder),
                                    "--input-shape", "1,3,32,32", *extra, "--out", str(tmp_path / "b"), *FAST])
    assert res.exit_code == 2 and said in res.output and "Hint: pass --resize" in res.output, res.output
    assert not (tmp_path / "b").exists()


def sized_cnn(num_classes: int = 4):
    """A factory with a classifier-size argument, as most are (timm.create_model, torchvision's builders)."""
    import torch

    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, num_classes))


def test_num_classes_reaches_a_factory_and_is_refused_where_it_would_be_ignored(tmp_path):
    """--num-classes was ignored for a factory (its default 4-class head shipped where 3 were asked) and for a
    model file, with no word."""
    from edgepack.errors import InputError
    from edgepack.inputs import sources

    assert sources.load("test_foreign_inputs:sized_cnn", num_classes=3).module[-1].out_features == 3
    with pytest.raises(InputError, match="takes no num_classes argument"):
        sources.load("test_foreign_inputs:nhwc_classifier", num_classes=3)
    onnx.save(nhwc_classifier(), tmp_path / "m.onnx")
    with pytest.raises(InputError, match="classifier size is fixed"):
        sources.load(str(tmp_path / "m.onnx"), num_classes=3)


@pytest.mark.parametrize("spec,said,hint", [("mod:make(num_classes=3)", "named without arguments", "use mod:make"),
                                            ("pkg/mod.py:make", "names a file", "use pkg.mod:make")])
def test_a_factory_spelt_as_code_or_a_file_is_told_how_to_name_it(spec, said, hint):
    """Both got "cannot tell what kind of model" or "No module named 'mod.py'"."""
    from edgepack.errors import InputError
    from edgepack.inputs import sources

    with pytest.raises(InputError, match=said) as err:
        sources.load(spec)
    assert hint in err.value.hint


def test_label_files_saved_with_a_byte_order_mark_read_as_written(tmp_path):
    """Notepad's BOM was part of the first class name (its class folder "a" then matched no label); a COCO JSON or
    a --config TOML with one could not be read at all."""
    from edgepack.inputs import labels

    (tmp_path / "labels.txt").write_bytes("\ufeffa\r\nb\r\n".encode())
    assert labels.read_class_names(tmp_path / "labels.txt") == ["a", "b"]
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "coco.json").write_bytes(("\ufeff" + json.dumps(coco)).encode())
    assert labels.coco_category_names(tmp_path / "coco.json") == ["cat"]
    from edgepack.config import read_toml

    (tmp_path / "build.toml").write_bytes('\ufeffmodel = "m.onnx"\r\n'.encode())
    assert read_toml(tmp_path / "build.toml") == {"model": "m.onnx"}


def test_an_empty_class_folder_keeps_its_class_number(tmp_path, image_folder):
    """a/, b/ (empty), c/: b was dropped, so c's photos were scored as class 1 and a 3-class model was told the
    folder "has 2 class folders". A flat folder beside an empty sub-folder (labels/ of a darknet layout) stays flat."""
    from edgepack.config import Preprocess
    from edgepack.inputs import data

    photos = sorted(image_folder.iterdir())
    for name, picked in (("a", photos[:2]), ("b", []), ("c", photos[2:3])):
        (tmp_path / "val" / name).mkdir(parents=True)
        for f in picked:
            (tmp_path / "val" / name / f.name).write_bytes(f.read_bytes())
    (tmp_path / "val" / "annotations").mkdir()  # other files only: no class
    (tmp_path / "val" / "annotations" / "boxes.json").write_text("{}")
    ds = data.load(str(tmp_path / "val"), input_shape=(1, 3, 16, 16), preprocess=Preprocess(), count=None, seed=0,
                   role="validation")
    assert ds.class_names == ["a", "b", "c"] and ds.y.tolist() == [0, 0, 2] and ds.empty_classes == ["b"]
    (image_folder / "labels").mkdir()
    flat = data.load(str(image_folder), input_shape=(1, 3, 16, 16), preprocess=Preprocess(), count=None, seed=0,
                     role="validation")
    assert flat.class_names is None and flat.y is None and len(flat) == len(photos)


def test_photos_in_a_symlinked_folder_are_read_and_a_symlink_loop_ends(tmp_path, image_folder):
    """Path.rglob (Python < 3.13) did not enter a symlinked sub-folder: a class folder made of links to photo
    folders read as empty."""
    from edgepack.inputs import data

    (tmp_path / "val" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "cat" / "shoot1").symlink_to(image_folder, target_is_directory=True)
    (tmp_path / "val" / "cat" / "loop").symlink_to(tmp_path / "val", target_is_directory=True)
    files, classes, labels = data._list_images(tmp_path / "val")
    assert classes == ["cat"] and len([f for f in files if "shoot1" in f.parts]) == len(list(image_folder.iterdir()))


def test_numbered_class_folders_are_said_to_be_numbered_as_text(tmp_path, image_folder):
    """Folders 0 ... 10 are classes 0, 1, 10, 2, ... (ImageFolder's order); a model whose class k is folder k was
    scored against the wrong classes without a word. --labels 0 ... 10 matches them by name."""
    photo = next(image_folder.iterdir())
    for k in range(11):
        (tmp_path / "val" / str(k)).mkdir(parents=True)
        (tmp_path / "val" / str(k) / photo.name).write_bytes(photo.read_bytes())
    (tmp_path / "labels.txt").write_text("\n".join(map(str, range(11))))
    said = "class folders are numbers"
    for extra, warned in (([], True), (["--labels", str(tmp_path / "labels.txt")], False)):
        res = CliRunner().invoke(main, ["build", "test_foreign_inputs:sized_cnn", "--num-classes", "11",
                                        "--input-shape", "1,3,16,16", "--calib", str(image_folder), "--val",
                                        str(tmp_path / "val"), *extra, "--out", str(tmp_path / f"b{len(extra)}"),
                                        *FAST])
        assert res.exit_code in (0, 1) and (said in res.output) == warned, res.output


def test_channels_last_npz_samples_are_told_to_transpose(tmp_path):
    """(N, H, W, C) samples (as TensorFlow pipelines save them) were told to "resize the data or pass
    --input-shape"."""
    from edgepack.config import Preprocess
    from edgepack.errors import InputError
    from edgepack.inputs import data

    np.savez(tmp_path / "v.npz", x=np.zeros((4, 24, 32, 3), np.float32))
    with pytest.raises(InputError, match="channels-last") as err:
        data.load(str(tmp_path / "v.npz"), input_shape=(1, 3, 24, 32), preprocess=Preprocess(), count=None, seed=0,
                  role="validation")
    assert "x.transpose(0, 3, 1, 2)" in err.value.hint


def conv_head_classifier() -> onnx.ModelProto:
    """SqueezeNet's head, as Caffe-converted and model-zoo files have it: 1x1 conv, global pool -> (1, 3, 1, 1)."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.5, (3, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["scores"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, 1, 1])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_class_scores_of_a_conv_head_are_classified_and_flattened(tmp_path, image_folder):
    """(N, C, 1, 1) scores made the build generic: the labelled class folders and --labels were dropped without a
    word (SQNR only), and --task classify refused the model."""
    from edgepack import tasks

    assert tasks.for_outputs([(1, 3, 1, 1)]).name == "classify" and tasks.score_count((1, 3, 1, 1)) == 3
    assert tasks.for_outputs([(1, 3, 4, 4)]).name == "generic"
    photos = sorted(image_folder.iterdir())
    for k, name in enumerate(("ant", "bee", "cow")):
        (tmp_path / "val" / name).mkdir(parents=True)
        for f in photos[k::3]:
            (tmp_path / "val" / name / f.name).write_bytes(f.read_bytes())
    onnx.save(conv_head_classifier(), tmp_path / "zoo.onnx")
    res = CliRunner().invoke(main, ["build", str(tmp_path / "zoo.onnx"), "--calib", str(image_folder), "--val",
                                    str(tmp_path / "val"), "--out", str(tmp_path / "b"), *FAST])
    assert res.exit_code in (0, 1) and "class scores are [1, 3, 1, 1]" in res.output, res.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["outputs"][0]["name"] == "scores" and manifest["outputs"][0]["shape"] == [1, 3]
    assert manifest["validation"]["accuracy_fp32"] is not None and manifest["labels"] == ["ant", "bee", "cow"]


def test_labels_a_generic_build_cannot_use_are_said_to_be_unused(tmp_path, image_folder):
    """Scores shaped (1, 1, C) make the build generic: its class folders' labels and --labels were ignored without a
    word."""
    model = conv_head_classifier()
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 3], np.int64), "shape"))
    model.graph.node.append(helper.make_node("Reshape", ["scores", "shape"], ["flat"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 1, 3]))
    onnx.save(model, tmp_path / "m.onnx")
    photos = sorted(image_folder.iterdir())
    for k, name in enumerate(("ant", "bee", "cow")):
        (tmp_path / "val" / name).mkdir(parents=True)
        (tmp_path / "val" / name / photos[k].name).write_bytes(photos[k].read_bytes())
    res = CliRunner().invoke(main, ["build", str(tmp_path / "m.onnx"), "--calib", str(image_folder), "--val",
                                    str(tmp_path / "val"), "--out", str(tmp_path / "b"), *FAST])
    assert res.exit_code in (0, 1) and "the 3 validation labels are not used: the task is generic" in res.output


def test_a_long_strip_is_not_resized_whole(tmp_path, monkeypatch):
    """A 4,000 x 1 PNG (12 kB) was resized whole to 1,024,000 x 256 pixels (1 GB) for a 224 px input; a longer one
    ran the machine out of memory. The bundle's run.py reads it as the build does."""
    from PIL import Image

    from edgepack.bundle.templates import run as runner
    from edgepack.config import Preprocess
    from edgepack.inputs import data

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1, 4000, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    made, resize = [], Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda im, size, *a, **k: made.append(size) or resize(im, size, *a, **k))
    pixels = data.image_pixels(tmp_path / "s.png", (1, 3, 224, 224), Preprocess(mean=(0.0,) * 3, std=(1.0,) * 3))
    assert max(w * h for w, h in made) <= data.MAX_RESIZED_PIXELS
    pre = {"crop": None, "resize": None, "channel_order": "RGB", "scale": 1.0, "mean": [0.0] * 3, "std": [1.0] * 3}
    x, _ = runner.load_image(tmp_path / "s.png", pre, [1, 3, 224, 224])
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), pixels)


def test_an_onnx_file_with_external_weights_loads(tmp_path):
    """model.onnx + model.onnx.data (torch's dynamo exporter, files over 2 GB) was "not a valid ONNX model ... should
    be stored in model.onnx.data, but it doesn't exist": the checker was given the proto without its folder."""
    from edgepack.errors import InputError
    from edgepack.inputs import sources
    from edgepack.util import sha256_file

    onnx.save_model(nhwc_classifier(), tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    loaded = sources.load(str(tmp_path / "m.onnx"))
    assert loaded.kind == "onnx" and loaded.weights_sha256 == sha256_file(tmp_path / "m.onnx.data")
    (tmp_path / "m.onnx.data").rename(tmp_path / "elsewhere.data")
    with pytest.raises(InputError) as err:
        sources.load(str(tmp_path / "m.onnx"))
    assert "put m.onnx.data in" in err.value.hint


def test_an_nhwc_onnx_file_with_nhwc_npz_samples_keeps_its_layout(tmp_path):
    """Samples saved as the file takes them, (N, H, W, 3), still build as they did: nothing is transposed."""
    onnx.save(nhwc_classifier(), tmp_path / "keras.onnx")
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32))
    res = CliRunner().invoke(main, ["build", str(tmp_path / "keras.onnx"), "--calib", str(tmp_path / "c.npz"),
                                    "--out", str(tmp_path / "b"), *FAST])
    assert res.exit_code in (0, 1) and "channels-last" not in res.output, res.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["inputs"][0]["shape"] == [1, 32, 32, 3]


def test_run_py_top_must_be_a_count(nhwc_bundle):
    """--top -1 printed every class but the last (a Python slice), --top 0 nothing, both with exit 0."""
    bundle, _ = nhwc_bundle
    photo = sorted((ROOT / "calibration_data" / "images").glob("*.jpg"))[0]
    proc = subprocess.run([sys.executable, str(bundle / "run.py"), str(photo), "--top", "-1"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--top -1" in proc.stderr and not proc.stdout


def test_documents_and_videos_beside_photos_are_not_read_as_photos(tmp_path, image_folder):
    """Pillow registers .pdf (save only), .mpg (a stub) and .h5: they were listed as photos, skipped as unreadable,
    and 4 of them beside 3 photos failed the folder ("not readable images")."""
    from edgepack.config import Preprocess
    from edgepack.inputs import data

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in sorted(image_folder.iterdir())[:3]:
        (mixed / f.name).write_bytes(f.read_bytes())
    for name in ("README.pdf", "clip.mpg", "clip2.MPEG", "model.h5"):
        (mixed / name).write_bytes(b"not a photo")
    ds = data.load(str(mixed), input_shape=(1, 3, 16, 16), preprocess=Preprocess(), count=None, seed=0,
                   role="calibration")
    assert len(ds) == 3 and not ds.skipped
