"""Labelled shapes scenes, made offline: rectangles, circles and triangles from ``skimage.draw.random_shapes`` on
varied backgrounds, with exact boxes, written as PNG images plus YOLO txt labels (``edgepack build --task detect
--labels-dir`` reads them).

Each image is SIZE x SIZE RGB with 1-5 shapes. Every shape comes from its own ``random_shapes`` call (one shape
of the drawn class on a canvas of its size), so its pixel mask is exact; it is placed where its box, grown by
GAP pixels, touches no other box, and painted in a colour at least MIN_CONTRAST (sum of |RGB differences|) away
from the mean of the background under it, with a little per-pixel noise. A label is the tight box of the
shape's pixels (xyxy, right and bottom edges exclusive) and its class (0 rectangle, 1 circle, 2 triangle).

Backgrounds differ by split, so the held-out score is measured on scenes the model and the quantizer never saw:

- train, val (training, early stopping) and calib (INT8 calibration, another seed): flat colours, gradients,
  coarse value noise, low-contrast crops of astronaut, china, grass, hubble_deep_field;
- heldout (scoring): low-contrast stripes, checkerboards, fine grain noise, low-contrast crops of brick, camera,
  immunohistochemistry.

Photos come from calibration_data/images (CC0 / public-domain skimage images); coins and coffee are not used
(their round things would be unlabelled circles), nor is text. Each split has its own seeded stream
(numpy's default_rng(seed + SEEDS[split])): the same seed gives the same bytes.

    python -m examples.ssdlite_shapes.data --split calib --count 200 --out /work/tmp/ssd/calib
    python -m examples.ssdlite_shapes.data --split heldout --count 300 --out /work/tmp/ssd/heldout
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 192          # image and model input side, pixels (see README: why not 320)
CLASSES = ("rectangle", "circle", "triangle")
SPLITS = ("train", "val", "calib", "heldout")
SEEDS = {"train": 1000, "val": 2000, "calib": 3000, "heldout": 4000}
STYLES = {"train": ("flat", "gradient", "noise", "photo"), "heldout": ("stripes", "checker", "grain", "photo")}
PHOTO_DIR = Path(__file__).resolve().parents[2] / "calibration_data" / "images"
PHOTOS = {"train": ("astronaut", "china", "grass", "hubble_deep_field"),
          "heldout": ("brick", "camera", "immunohistochemistry")}
MIN_SHAPES, MAX_SHAPES = 1, 5
MIN_SIDE, MAX_SIDE = 14, 72   # a shape's canvas side, pixels
GAP = 3                        # free pixels between two shapes' boxes
MIN_CONTRAST = 150             # sum over RGB of |shape colour - background mean under it|, 0-765


def style_group(split: str) -> str:
    """Which background family a split draws from: held-out has its own, every other split train's."""
    return "heldout" if split == "heldout" else "train"


@dataclass(frozen=True)
class Scene:
    """One image (SIZE, SIZE, 3) uint8, its boxes (M, 4) xyxy int pixels, classes (M,) and background style."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    background: str


# ---- backgrounds --------------------------------------------------------------------------------------------


def photo_files(split: str) -> list[Path]:
    """The calibration_data/images files of the split's photos (``calib_NNNN_<photo>.jpg``), sorted."""
    names = PHOTOS[style_group(split)]
    return sorted(p for p in PHOTO_DIR.glob("*.jpg") if p.stem.split("_", 2)[-1] in names)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float64)


def _two_tone(rng: np.random.Generator, on: np.ndarray) -> np.ndarray:
    a, b = _colour(rng), _colour(rng)
    return a * (1 - on[..., None]) + (a + (b - a) * 0.3) * on[..., None]   # low contrast: shapes stay the figure


def background(kind: str, rng: np.random.Generator, photos: list[Path]) -> np.ndarray:
    """A SIZE x SIZE x 3 float64 background of ``kind``."""
    grid = np.arange(SIZE)
    if kind == "flat":
        img = np.broadcast_to(_colour(rng), (SIZE, SIZE, 3))
    elif kind == "gradient":
        t = np.linspace(0, 1, SIZE)
        t = t[None, :, None] if rng.random() < 0.5 else t[:, None, None]
        img = _colour(rng) * (1 - t) + _colour(rng) * t
    elif kind == "noise":     # coarse value noise: a random 3-8 cell grid, bilinearly upsampled
        cells = int(rng.integers(3, 9))
        coarse = rng.integers(0, 256, (cells, cells, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float64)
    elif kind == "stripes":
        period = int(rng.integers(8, 40))
        axis = grid[None, :] if rng.random() < 0.5 else grid[:, None]
        img = _two_tone(rng, np.broadcast_to(((axis // (period // 2)) % 2).astype(np.float64), (SIZE, SIZE)))
    elif kind == "checker":
        cell = int(rng.integers(6, 24))
        img = _two_tone(rng, (((grid[:, None] // cell) + (grid[None, :] // cell)) % 2).astype(np.float64))
    elif kind == "grain":     # fine value noise (a 16-32 cell grid) plus strong grain
        cells = int(rng.integers(16, 33))
        coarse = rng.integers(0, 256, (cells, cells, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float64)
        img = 128 + 0.5 * (img - 128) + rng.normal(0, 12, img.shape)
    else:
        img = _photo_crop(rng, photos)
    return np.clip(np.broadcast_to(img, (SIZE, SIZE, 3)), 0, 255)


def _photo_crop(rng: np.random.Generator, photos: list[Path]) -> np.ndarray:
    """A square crop of a photo at SIZE, its contrast cut to 40 % around its mean (shapes stay the figure)."""
    with Image.open(photos[int(rng.integers(len(photos)))]) as im:
        im = im.convert("RGB")
        side = int(rng.integers(min(im.size) // 3, min(im.size) + 1))
        x, y = int(rng.integers(0, im.size[0] - side + 1)), int(rng.integers(0, im.size[1] - side + 1))
        img = np.asarray(im.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.Resampling.BILINEAR),
                         np.float64)
    return img.mean((0, 1)) + 0.4 * (img - img.mean((0, 1)))


# ---- shapes -------------------------------------------------------------------------------------------------


def shape_mask(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """The (h, w) bool pixel mask of one ``kind`` shape from ``skimage.draw.random_shapes`` (size between 2/3
    of ``side`` and ``side``, drawn on a canvas twice that so every class fits), cropped to its pixels."""
    from skimage.draw import random_shapes

    for _ in range(20):
        with warnings.catch_warnings():   # "Could not fit any shapes": that draw is retried
            warnings.simplefilter("ignore", UserWarning)
            img, labels = random_shapes((2 * side, 2 * side), max_shapes=1, min_shapes=1,
                                        min_size=max(8, side * 2 // 3), max_size=side, channel_axis=None, shape=kind,
                                        intensity_range=(0, 0), num_trials=200, rng=int(rng.integers(2**31)))
        mask = img != 255
        edge = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        if labels and mask.any() and not edge:   # a shape touching the canvas edge is cut (a trapezoid)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            if min(crop.shape) >= 6:
                return crop
    raise RuntimeError(f"random_shapes drew no {kind} of side {side}")


def _place(h: int, w: int, boxes: list, rng: np.random.Generator) -> tuple[int, int] | None:
    """A top-left corner where an (h, w) box, grown by GAP, overlaps no box in ``boxes``; None after 50 tries."""
    for _ in range(50):
        y, x = int(rng.integers(0, SIZE - h + 1)), int(rng.integers(0, SIZE - w + 1))
        if all(x + w + GAP <= a or c + GAP <= x or y + h + GAP <= b or d + GAP <= y for a, b, c, d in boxes):
            return y, x
    return None


def _shape_colour(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour at least MIN_CONTRAST (sum of |RGB differences|) from the region's mean."""
    mean = region.reshape(-1, 3).mean(0)
    for _ in range(100):
        c = _colour(rng)
        if np.abs(c - mean).sum() >= MIN_CONTRAST:
            return c
    return np.where(mean > 127, 0.0, 255.0)


def render(rng: np.random.Generator, kinds: tuple[str, ...], photos: list[Path]) -> Scene:
    """One scene: a background, then 1-5 shapes of random classes and sizes, painted over it."""
    kind = kinds[int(rng.integers(len(kinds)))]
    img = background(kind, rng, photos).copy()
    boxes, classes = [], []
    for _ in range(int(rng.integers(MIN_SHAPES, MAX_SHAPES + 1))):
        cls = int(rng.integers(len(CLASSES)))
        mask = shape_mask(CLASSES[cls], int(rng.integers(MIN_SIDE, MAX_SIDE + 1)), rng)
        h, w = mask.shape
        at = _place(h, w, boxes, rng)
        if at is None:
            continue
        y, x = at
        region = img[y:y + h, x:x + w]
        colour = _shape_colour(region[mask], rng)
        region[mask] = colour + rng.normal(0, 6, (int(mask.sum()), 3))
        boxes.append((x, y, x + w, y + h))
        classes.append(cls)
    img += rng.normal(0, 3, img.shape)
    return Scene(image=np.clip(np.rint(img), 0, 255).astype(np.uint8),
                 boxes=np.asarray(boxes, np.int64).reshape(-1, 4), classes=np.asarray(classes, np.int64),
                 background=kind)


def scenes(split: str, count: int, seed: int = 0):
    """Yield ``count`` Scenes of ``split``, seeded (the split's own stream)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    photos = photo_files(split)
    kinds = tuple(k for k in STYLES[style_group(split)] if k != "photo" or photos)
    rng = np.random.default_rng(seed + SEEDS[split])
    for _ in range(count):
        yield render(rng, kinds, photos)


def arrays(split: str, count: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(images (N, SIZE, SIZE, 3) uint8, boxes per image, classes per image) of ``split``, in memory."""
    out = list(scenes(split, count, seed))
    return np.stack([s.image for s in out]), [s.boxes for s in out], [s.classes for s in out]


def yolo_lines(boxes: np.ndarray, classes: np.ndarray) -> str:
    """YOLO txt of one image: ``class cx cy w h`` per box, normalised to SIZE."""
    rows = []
    for (x1, y1, x2, y2), c in zip(boxes.tolist(), classes.tolist(), strict=True):
        rows.append(f"{c} {(x1 + x2) / 2 / SIZE:.6f} {(y1 + y2) / 2 / SIZE:.6f} {(x2 - x1) / SIZE:.6f} "
                    f"{(y2 - y1) / SIZE:.6f}")
    return "".join(r + "\n" for r in rows)


def write(split: str, count: int, out: Path, seed: int = 0) -> Path:
    """Write ``out``/images/*.png, ``out``/labels/*.txt (YOLO, same stems), ``out``/classes.txt and
    ``out``/boxes.json (pixel boxes, classes, background per image); return ``out``."""
    images, labels = out / "images", out / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(exist_ok=True)
    index = {}
    for i, s in enumerate(scenes(split, count, seed)):
        name = f"{split}_{i:05d}"
        Image.fromarray(s.image).save(images / f"{name}.png")
        (labels / f"{name}.txt").write_text(yolo_lines(s.boxes, s.classes))
        index[f"{name}.png"] = {"boxes": s.boxes.tolist(), "classes": s.classes.tolist(), "background": s.background}
    (out / "classes.txt").write_text("".join(c + "\n" for c in CLASSES))
    (out / "boxes.json").write_text(json.dumps({"split": split, "seed": seed, "size": SIZE, "classes": CLASSES,
                                                "images": index}, indent=0, sort_keys=True))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=SPLITS, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    write(args.split, args.count, args.out, args.seed)


if __name__ == "__main__":
    main()
