"""Regenerate edgepack's shipped calibration set and the held-out natural-photo validation set.

Sources are photos that installed packages ship under permissive licences (see README.md here):
scikit-image's `skimage.data` (CC0 / public domain / BSD) and scikit-learn's `load_sample_images`
(china.jpg, flower.jpg; BSD-3 package). Calibration and validation use *disjoint source photos*, so
agreement measured on the validation set is measured on photos the quantizer never saw.

Each sample is a seeded random crop (random scale 0.35-1.0 of the short side, random position,
random horizontal flip) resized to 256x256 and stored as a JPEG (quality 92); the model's own
preprocessing (resize / centre crop / normalise) is applied later by edgepack.

    python calibration_data/make_calibration.py               # calibration_data/images (200 files)
    python calibration_data/make_calibration.py --split val --count 500 --out /tmp/natural_val
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CALIB_SOURCES = (
    "astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "sklearn:china.jpg", "camera", "coins", "brick", "grass", "text",
)
VAL_SOURCES = (
    "chelsea", "stereo_motorcycle:left", "stereo_motorcycle:right", "sklearn:flower.jpg",
    "retina", "moon", "clock", "gravel", "page",
)
SIDE = 256


def load_source(name: str) -> np.ndarray:
    """Return one source photo as HxWx3 uint8 RGB."""
    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(name.split(":", 1)[1])
    else:
        import skimage.data

        base, _, view = name.partition(":")
        img = getattr(skimage.data, base)()
        if isinstance(img, tuple):
            img = img[0 if view in ("", "left") else 1]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def random_crop(img: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A seeded random square crop (35-100 % of the short side), maybe flipped, resized to SIDE."""
    h, w = img.shape[:2]
    side = int(min(h, w) * rng.uniform(0.35, 1.0))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(img[top:top + side, left:left + side])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.resize((SIDE, SIDE), Image.Resampling.BICUBIC)


def generate(split: str, count: int, out: Path, seed: int) -> list[Path]:
    """Write `count` crops spread evenly over the split's source photos; return the paths (sorted)."""
    sources = CALIB_SOURCES if split == "calib" else VAL_SOURCES
    photos = {name: load_source(name) for name in sources}
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name = sources[i % len(sources)]
        stem = name.replace("sklearn:", "").replace(".jpg", "").replace(":", "-")
        path = out / f"{split}_{i:04d}_{stem}.jpg"
        random_crop(photos[name], rng).save(path, quality=92)
        paths.append(path)
    return sorted(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["calib", "val"], default="calib")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="default: 0 for calib, 1 for val")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else (0 if args.split == "calib" else 1)
    paths = generate(args.split, args.count, args.out, seed)
    print(f"wrote {len(paths)} images to {args.out}")


if __name__ == "__main__":
    main()
