"""The LRASPP shapes example's scene generator (examples/lraspp_shapes/data.py): every mask pixel belongs to the
shape it labels, the masks parse with edgepack's own PNG-mask reader, the held-out split shares no background
with calibration, and a seed gives the same bytes. Offline, seconds; no trained weights needed."""

from __future__ import annotations

import json

import numpy as np

from examples.lraspp_shapes import data


def _region(s, cls, box):
    r0, r1, c0, c1 = box
    region = np.zeros(s.mask.shape, bool)
    region[r0:r1 + 1, c0:c1 + 1] = True
    return region & (s.mask == cls)


def _overlaps(a, b):
    return not (a[1] < b[0] or b[1] < a[0] or a[3] < b[2] or b[3] < a[2])


def test_each_mask_region_is_the_shape_its_class_names():
    """Within its own extent a rectangle is full, a circle covers about pi/4, an upright triangle about half;
    no labelled pixel lies outside the boxes of its class."""
    fill = {1: (1.0, 1.0), 2: (0.70, 0.86), 3: (0.40, 0.62)}
    seen = set()
    for split in ("train", "heldout"):
        for s in data.samples(split, 12, seed=3):
            assert s.image.shape == (data.SIZE, data.SIZE, 3) and s.image.dtype == np.uint8
            assert s.mask.shape == (data.SIZE, data.SIZE) and s.mask.dtype == np.uint8
            assert set(np.unique(s.mask)) <= set(range(len(data.CLASSES)))
            assert data.MIN_SHAPES <= len(s.shapes) <= data.MAX_SHAPES
            covered = np.zeros(s.mask.shape, bool)
            for i, (cls, box) in enumerate(s.shapes):
                region = _region(s, cls, box)
                assert region.any()
                covered |= region
                seen.add(cls)
                if any(c == cls and _overlaps(box, b) for j, (c, b) in enumerate(s.shapes) if j != i):
                    continue   # two shapes of one class share box pixels: the region is not one shape
                rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
                h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
                if min(h, w) >= 10:   # edge pixels dominate tiny shapes
                    lo, hi = fill[cls]
                    assert lo <= region.sum() / (h * w) <= hi, (data.CLASSES[cls], region.sum() / (h * w))
            np.testing.assert_array_equal(covered, s.mask > 0)
    assert seen == {1, 2, 3}


def test_shapes_stand_out_from_their_background():
    """Every shape's mean colour differs from the pixels just outside it (what the model must see)."""
    from scipy import ndimage

    for s in data.samples("calib", 10, seed=4):
        img = s.image.astype(np.float64) @ (0.299, 0.587, 0.114)
        for cls, box in s.shapes:
            inside = _region(s, cls, box)
            ring = ndimage.binary_dilation(inside, iterations=2) & (s.mask == 0)
            if ring.sum() >= 20:
                assert abs(img[inside].mean() - img[ring].mean()) > 15


def test_masks_parse_with_edgepacks_reader(tmp_path):
    from edgepack.config import Preprocess
    from edgepack.inputs import data as ep_data
    from edgepack.inputs.labels import read_masks

    out = data.write("heldout", 4, tmp_path / "heldout", seed=2)
    shape = (1, 3, data.SIZE, data.SIZE)
    pre = Preprocess(resize=data.SIZE, crop=data.SIZE)
    ds = ep_data.load(str(out / "images"), input_shape=shape, preprocess=pre, count=None, seed=0, role="validation")
    masks = read_masks(ds, str(out / "masks"), input_shape=shape, preprocess=pre, num_classes=len(data.CLASSES))
    expected = {f"heldout_{i:05d}.png": s.mask for i, s in enumerate(data.samples("heldout", 4, seed=2))}
    assert len(masks) == 4
    for path, mask in zip(ds.files, masks, strict=True):
        np.testing.assert_array_equal(mask, expected[path.name if hasattr(path, "name") else path.split("/")[-1]])
    index = json.loads((out / "shapes.json").read_text())
    assert index["classes"] == list(data.CLASSES) and len(index["images"]) == 4


def test_heldout_backgrounds_are_disjoint_from_calibration_and_training():
    for split in ("train", "val", "calib"):
        assert not set(data.STYLE[split]["synthetic"]) & set(data.STYLE["heldout"]["synthetic"])
        assert not set(data.photo_files(split)) & set(data.photo_files("heldout"))
    kinds = {split: {s.background for s in data.samples(split, 12, seed=0)} for split in ("calib", "heldout")}
    assert not (kinds["calib"] - {"photo"}) & kinds["heldout"]
    assert len(set(data.SEEDS.values())) == len(data.SPLITS)


def test_generation_is_deterministic_for_a_seed():
    a = list(data.samples("calib", 3, seed=7))
    b = list(data.samples("calib", 3, seed=7))
    c = list(data.samples("calib", 3, seed=8))
    for s, t in zip(a, b, strict=True):
        np.testing.assert_array_equal(s.image, t.image)
        np.testing.assert_array_equal(s.mask, t.mask)
        assert s.shapes == t.shapes
    assert any(not np.array_equal(s.image, t.image) for s, t in zip(a, c, strict=True))
