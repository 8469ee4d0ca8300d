"""The PP-OCRv4 example's data renderer (examples/ppocr_det/data.py): labels agree with the pixels, the held-out
split shares no font and no background with calibration, and a seed gives the same images. Offline, seconds;
no rapidocr needed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from examples.ppocr_det import data


@pytest.fixture(scope="module")
def fonts():
    split = data.split_fonts(data.font_files())
    if not split["calib"] or not split["heldout"]:
        pytest.skip("fewer than two TrueType fonts on this machine")
    return split


def test_boxes_lie_inside_the_image_and_the_mask_is_their_union(fonts):
    for split in data.SPLITS:
        for s in data.samples(split, 6, seed=3):
            assert s.image.shape == (data.SIZE, data.SIZE, 3) and s.image.dtype == np.uint8
            assert len(s.boxes) >= 1
            b = s.boxes
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= data.SIZE).all() \
                and (b[:, 3] <= data.SIZE).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
            assert set(np.unique(s.mask)) <= {0, 1}
            assert int(s.mask.sum()) == int(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sum())  # boxes never overlap
            np.testing.assert_array_equal(s.mask, data.mask_of(b))


def test_every_box_holds_ink_and_the_ink_stays_in_its_box(fonts):
    """The box is the line's exact ink extent: text pixels differ from the background inside it."""
    flat = [s for s in data.samples("calib", 12, seed=5) if s.background == "flat"]
    assert flat
    for s in flat:
        bg = s.image[0, 0].astype(int)
        ink = np.abs(s.image.astype(int) - bg).sum(-1) > 30
        assert not ink[s.mask == 0].any()             # no ink outside the labelled boxes
        for x1, y1, x2, y2 in s.boxes:
            assert ink[y1:y2, x1:x2].any()


def test_heldout_fonts_and_backgrounds_are_disjoint_from_calibration(fonts):
    assert not {data.family(f) for f in fonts["calib"]} & {data.family(f) for f in fonts["heldout"]}
    assert not set(data.PHOTOS["calib"]) & set(data.PHOTOS["heldout"])
    assert not set(data.SYNTHETIC["calib"]) & set(data.SYNTHETIC["heldout"])
    assert not set(data.photo_files("calib")) & set(data.photo_files("heldout"))
    used = {split: [(s.font, s.background) for s in data.samples(split, 12, seed=0)] for split in data.SPLITS}
    calib_fonts, calib_bgs = {f for f, _ in used["calib"]}, {b for _, b in used["calib"]}
    assert not calib_fonts & {f for f, _ in used["heldout"]}
    assert not (calib_bgs - {"photo"}) & {b for _, b in used["heldout"]}


def test_rendering_is_deterministic_for_a_seed(fonts, tmp_path):
    a = list(data.samples("heldout", 3, seed=7))
    b = list(data.samples("heldout", 3, seed=7))
    c = list(data.samples("heldout", 3, seed=8))
    for s, t in zip(a, b, strict=True):
        np.testing.assert_array_equal(s.image, t.image)
        np.testing.assert_array_equal(s.boxes, t.boxes)
    assert any(not np.array_equal(s.image, t.image) for s, t in zip(a, c, strict=True))
    out = data.write("calib", 2, tmp_path / "calib", seed=1)
    index = json.loads((out / "boxes.json").read_text())
    assert sorted(index["images"]) == ["calib_00000.png", "calib_00001.png"]
    assert (out / "images" / "calib_00000.png").is_file() and (out / "masks" / "calib_00000.png").is_file()
