"""The SSDLite example's scene generator (examples/ssdlite_shapes/data.py): every box is the tight box of its
shape's pixels, the YOLO labels parse with edgepack's own reader into the same boxes, held-out backgrounds differ
from the training ones, and a seed gives the same scenes. Offline, seconds."""

from __future__ import annotations

import json

import numpy as np

from examples.ssdlite_shapes import data


def _shape_pixels(scene: data.Scene) -> np.ndarray:
    """Pixels far from a flat background's colour (the image's median; shapes differ by >= MIN_CONTRAST)."""
    bg = np.median(scene.image.reshape(-1, 3), axis=0)
    return np.abs(scene.image.astype(np.float64) - bg).sum(-1) > 60


def test_boxes_are_the_tight_boxes_of_the_shapes():
    flat = [s for s in data.scenes("train", 24, seed=5) if s.background == "flat"]
    assert flat
    for s in flat:
        ink = _shape_pixels(s)
        inside = np.zeros_like(ink)
        for x1, y1, x2, y2 in s.boxes:
            assert 0 <= x1 < x2 <= data.SIZE and 0 <= y1 < y2 <= data.SIZE
            box = ink[y1:y2, x1:x2]
            # tight: the shape reaches every edge of its box
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            inside[y1:y2, x1:x2] = True
        assert not ink[~inside].any()          # no shape pixel outside the labelled boxes


def test_every_split_has_shapes_of_every_class_and_boxes_never_touch():
    for split in data.SPLITS:
        scenes = list(data.scenes(split, 12, seed=0))
        classes = np.concatenate([s.classes for s in scenes])
        assert set(classes.tolist()) == set(range(len(data.CLASSES)))
        for s in scenes:
            assert data.MIN_SHAPES <= len(s.boxes) <= data.MAX_SHAPES and len(s.boxes) == len(s.classes)
            for i, a in enumerate(s.boxes):
                for b in s.boxes[i + 1:]:
                    assert a[2] + data.GAP <= b[0] or b[2] + data.GAP <= a[0] or a[3] + data.GAP <= b[1] \
                        or b[3] + data.GAP <= a[1]


def test_yolo_labels_parse_with_edgepacks_reader(tmp_path):
    from edgepack.config import Preprocess
    from edgepack.inputs import data as ep_data
    from edgepack.inputs.labels import read_boxes

    out = data.write("heldout", 4, tmp_path / "heldout", seed=2)
    pre = Preprocess(resize=data.SIZE, crop=data.SIZE, scale=1 / 255, mean=(0.5,) * 3, std=(0.5,) * 3)
    shape = (1, 3, data.SIZE, data.SIZE)
    ds = ep_data.load(str(out / "images"), input_shape=shape, preprocess=pre, count=None, seed=0, role="validation")
    got = read_boxes(ds, str(out / "labels"), input_shape=shape, preprocess=pre, num_classes=len(data.CLASSES))
    index = json.loads((out / "boxes.json").read_text())["images"]
    assert len(got) == 4
    for f, t in zip(ds.files, got, strict=True):
        want = index[f.split("/")[-1]]
        np.testing.assert_allclose(t["boxes"], np.asarray(want["boxes"], np.float64), atol=1e-3)
        np.testing.assert_array_equal(t["classes"], want["classes"])
    assert (out / "classes.txt").read_text().split() == list(data.CLASSES)


def test_heldout_backgrounds_differ_from_training():
    assert not set(data.PHOTOS["train"]) & set(data.PHOTOS["heldout"])
    assert not (set(data.STYLES["train"]) - {"photo"}) & set(data.STYLES["heldout"])
    assert not set(data.photo_files("calib")) & set(data.photo_files("heldout"))
    used = {s.background for s in data.scenes("heldout", 16, seed=0)}
    assert used <= set(data.STYLES["heldout"]) and len(used) >= 3


def test_scenes_are_deterministic_for_a_seed():
    a, b, c = (list(data.scenes("calib", 3, seed=s)) for s in (7, 7, 8))
    for s, t in zip(a, b, strict=True):
        np.testing.assert_array_equal(s.image, t.image)
        np.testing.assert_array_equal(s.boxes, t.boxes)
        np.testing.assert_array_equal(s.classes, t.classes)
    assert any(not np.array_equal(s.image, t.image) for s, t in zip(a, c, strict=True))
    # the splits are different streams
    assert not np.array_equal(next(data.scenes("calib", 1, 0)).image, next(data.scenes("train", 1, 0)).image)
