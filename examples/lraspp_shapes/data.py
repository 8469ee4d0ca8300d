"""Labelled shape scenes for semantic segmentation, made offline: rectangles, circles and triangles on textures.

Each image is SIZE x SIZE RGB (PNG) with 1-5 shapes; its label is a PNG index mask named like the image
(0 background, 1 rectangle, 2 circle, 3 triangle), the format ``edgepack build --task segment --labels-dir``
reads. The shapes' geometry comes from ``skimage.draw.random_shapes`` (drawn in black on white, so its label
image *is* the union of the shapes; each shape's pixels are the drawn pixels inside its returned box); every
shape is then painted on a background in its own colour, at least MIN_CONTRAST of luminance away from the
background under it, with a soft shading ramp, and the whole image gets Gaussian grain.

Shapes never overlap (``allow_overlap=False``); a layout in which a drawn pixel lies inside the boxes of two
shapes of different classes is redrawn, so every mask pixel has exactly one class. Ellipses (which
random_shapes also draws) are redrawn too: a near-round ellipse is not a fourth class we want to label.

Four splits, each with its own seeded stream (numpy default_rng(seed + SEEDS[split])):

| split | use | backgrounds | grain sigma |
|---|---|---|---|
| train | training | flat, gradient, smooth value noise, crops of 6 photos (PHOTOS["train"]) | 0-8 |
| val | early stopping | as train | 0-8 |
| calib | edgepack --calib | as train | 0-8 |
| heldout | edgepack --val, --labels-dir | stripes, checkerboards, crops of 3 other photos | 2-12 |

The held-out split shares no background style and no photo with the others, so its score is not tuned to
the calibration set (nor to training). coins and coffee are never used: their round objects would be
unlabelled circles.

    python -m examples.lraspp_shapes.data --split calib --count 200 --out /work/tmp/lraspp/calib
    python -m examples.lraspp_shapes.data --split heldout --count 300 --out /work/tmp/lraspp/heldout
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 160                # model input side, pixels (see README: why 160)
CLASSES = ("background", "rectangle", "circle", "triangle")
SPLITS = ("train", "val", "calib", "heldout")
SEEDS = {"train": 1000, "val": 2000, "calib": 3000, "heldout": 4000}   # added to the user's seed
PHOTO_DIR = Path(__file__).resolve().parents[2] / "calibration_data" / "images"
_SEEN = {"photos": ("astronaut", "brick", "china", "grass", "hubble_deep_field", "rocket"),
         "synthetic": ("flat", "gradient", "noise"), "grain": (0.0, 8.0)}
_HELDOUT = {"photos": ("camera", "immunohistochemistry", "text"),
            "synthetic": ("stripes", "checker"), "grain": (2.0, 12.0)}
STYLE = {"train": _SEEN, "val": _SEEN, "calib": _SEEN, "heldout": _HELDOUT}
PHOTOS = {split: style["photos"] for split, style in STYLE.items()}
MIN_SHAPES, MAX_SHAPES = 1, 5
MIN_SIZE, MAX_SIZE = 20, 72   # random_shapes' min_size / max_size (pixels)
MIN_CONTRAST = 60             # luminance distance (0-255) of a shape's colour from the background under it
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Sample:
    """One scene: image (H, W, 3) uint8, mask (H, W) uint8 class ids, the shapes as (class id, box) with box
    (row0, row1, col0, col1) inclusive as random_shapes returns it, and the background style."""

    image: np.ndarray
    mask: np.ndarray
    shapes: list
    background: str


# ---- geometry -----------------------------------------------------------------------------------------------


def layout(rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """(H, W) uint8 mask and [(class id, box)] of one random_shapes draw without ellipses or ambiguous pixels."""
    from skimage.draw import random_shapes

    while True:   # rejection: deterministic, because every draw takes its seed from ``rng``
        drawn, labels = random_shapes((SIZE, SIZE), max_shapes=MAX_SHAPES, min_shapes=MIN_SHAPES,
                                      min_size=MIN_SIZE, max_size=MAX_SIZE, num_channels=1,
                                      intensity_range=(0, 0), allow_overlap=False,
                                      rng=int(rng.integers(2**31)))
        if not labels or any(name not in CLASSES for name, _ in labels):
            continue
        ink = drawn[..., 0] == 0
        mask = np.zeros((SIZE, SIZE), np.uint8)
        owner = np.zeros((SIZE, SIZE), np.uint8)   # class claiming each drawn pixel; 255 = two classes
        for name, ((r0, r1), (c0, c1)) in labels:
            cls = CLASSES.index(name)
            box = np.zeros((SIZE, SIZE), bool)
            box[r0:r1 + 1, c0:c1 + 1] = True
            claim = ink & box
            clash = claim & (owner != 0) & (owner != cls)
            owner[clash] = 255
            owner[claim & (owner == 0)] = cls
        if (owner == 255).any() or (ink & (owner == 0)).any():
            continue
        mask[ink] = owner[ink]
        shapes = [(CLASSES.index(name), (int(r0), int(r1), int(c0), int(c1))) for name, ((r0, r1), (c0, c1))
                  in labels]
        return mask, shapes


# ---- appearance ---------------------------------------------------------------------------------------------


def photo_files(split: str) -> list[Path]:
    """The calibration_data/images files (``calib_NNNN_<photo>.jpg``) of the split's photos, sorted."""
    names = PHOTOS[split]
    return sorted(p for p in PHOTO_DIR.glob("*.jpg") if p.stem.split("_", 2)[-1] in names)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float64)


def background(kind: str, rng: np.random.Generator, photos: list[Path]) -> np.ndarray:
    """A SIZE x SIZE x 3 float64 background of ``kind``."""
    if kind == "flat":
        img = np.broadcast_to(_colour(rng), (SIZE, SIZE, 3))
    elif kind == "gradient":
        t = np.linspace(0, 1, SIZE)
        t = t[None, :] if rng.random() < 0.5 else t[:, None]
        img = _colour(rng) * (1 - t[..., None]) + _colour(rng) * t[..., None]
    elif kind == "noise":   # smooth value noise: a coarse random grid, bilinearly upsampled
        cells = int(rng.integers(3, 10))
        coarse = rng.integers(0, 256, (cells, cells, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float64)
    elif kind in ("stripes", "checker"):
        period = int(rng.integers(8, 40))
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        if kind == "stripes":
            angle = rng.uniform(0, np.pi)
            on = ((x * np.cos(angle) + y * np.sin(angle)) // (period / 2)) % 2
        else:
            on = (x // period + y // period) % 2
        a, b = _colour(rng), _colour(rng)
        img = a + (b - a) * rng.uniform(0.2, 0.5) * on[..., None]   # low contrast: the shapes stay the figure
    else:
        img = _photo_crop(rng, photos)
    return np.array(np.broadcast_to(img, (SIZE, SIZE, 3)), np.float64)


def _photo_crop(rng: np.random.Generator, photos: list[Path]) -> np.ndarray:
    with Image.open(photos[int(rng.integers(len(photos)))]) as im:
        im = im.convert("RGB")
        side = int(rng.integers(min(im.size) // 3, min(im.size) + 1))
        x, y = int(rng.integers(0, im.size[0] - side + 1)), int(rng.integers(0, im.size[1] - side + 1))
        crop = im.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        return np.asarray(crop, np.float64)


def shape_colour(under: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour at least MIN_CONTRAST of luminance from the mean of ``under`` (K, 3), so every shape shows."""
    lum = float(under.mean(0) @ _LUMA)
    for _ in range(50):
        c = _colour(rng)
        if abs(float(c @ _LUMA) - lum) >= MIN_CONTRAST:
            return c
    return np.zeros(3) if lum > 127 else np.full(3, 255.0)


def paint(bg: np.ndarray, mask: np.ndarray, shapes: list, rng: np.random.Generator) -> np.ndarray:
    """The shapes of ``mask`` painted on ``bg`` (float64), each in its own colour with a soft shading ramp."""
    img = bg.copy()
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    for cls, (r0, r1, c0, c1) in shapes:
        region = np.zeros_like(mask, bool)
        region[r0:r1 + 1, c0:c1 + 1] = True
        region &= mask == cls
        if not region.any():
            continue
        colour = shape_colour(bg[region], rng)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (x * np.cos(angle) + y * np.sin(angle))[region]
        ramp = (ramp - ramp.mean()) / max(1.0, float(np.ptp(ramp)))   # -0.5..0.5 across the shape
        img[region] = colour + rng.uniform(0, 40) * ramp[:, None]
    return img


def render(rng: np.random.Generator, split: str, photos: list[Path]) -> Sample:
    """One scene of ``split``'s style."""
    style = STYLE[split]
    kinds = style["synthetic"] + (("photo",) if photos else ())
    kind = kinds[int(rng.integers(len(kinds)))]
    mask, shapes = layout(rng)
    img = paint(background(kind, rng, photos), mask, shapes, rng)
    img = img + rng.normal(0, rng.uniform(*style["grain"]), img.shape)
    return Sample(image=np.clip(np.rint(img), 0, 255).astype(np.uint8), mask=mask, shapes=shapes, background=kind)


def samples(split: str, count: int, seed: int = 0):
    """Yield ``count`` Samples of ``split``, seeded: the same seed gives the same bytes."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    photos = photo_files(split)
    rng = np.random.default_rng(seed + SEEDS[split])
    for _ in range(count):
        yield render(rng, split, photos)


def arrays(split: str, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 images and (N, H, W) uint8 masks of ``split``, in memory (for training)."""
    items = list(samples(split, count, seed))
    return np.stack([s.image for s in items]), np.stack([s.mask for s in items])


def write(split: str, count: int, out: Path, seed: int = 0) -> Path:
    """Write ``out``/images/*.png, ``out``/masks/*.png (same names) and ``out``/shapes.json; return ``out``."""
    images, masks = out / "images", out / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(exist_ok=True)
    index = {}
    for i, s in enumerate(samples(split, count, seed)):
        name = f"{split}_{i:05d}.png"
        Image.fromarray(s.image).save(images / name)
        Image.fromarray(s.mask).save(masks / name)   # 2-D uint8: mode L, pixel value = class id
        index[name] = {"shapes": [[CLASSES[c], list(b)] for c, b in s.shapes], "background": s.background}
    doc = {"split": split, "seed": seed, "size": SIZE, "classes": list(CLASSES), "images": index}
    (out / "shapes.json").write_text(json.dumps(doc, indent=0, sort_keys=True))
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
