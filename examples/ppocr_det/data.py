"""Labelled text-detection images, rendered offline: text lines in the machine's fonts on varied backgrounds.

Each image is SIZE x SIZE RGB (PNG) with 2-7 horizontal text lines of random words; its labels are the exact
ink box of every line (xyxy pixels, in ``boxes.json``) and a PNG index mask (0 background, 1 inside a line's box)
named like the image, the format ``edgepack build --task segment --labels-dir`` reads.

Two splits, disjoint in *both* fonts and backgrounds, so the held-out score is measured on styles the quantizer
never calibrated on:

- fonts: the TrueType files ``fc-list`` reports, grouped by family (the file name before ``-``, e.g.
  ``LiberationSerif``); sorted families, every third one (index 2, 5, ...) is held out.
- backgrounds: calibration gets flat colours, linear gradients and crops of the photos astronaut, brick, china,
  coffee, grass, hubble_deep_field and rocket from calibration_data/images; held-out gets smooth noise
  textures, stripes and crops of camera, coins and immunohistochemistry. ``text`` is never used (its printed
  letters would be unlabelled text).

Rendering is seeded (numpy's default_rng(seed), a different stream per split), so the same seed, fonts and
photos give the same files.

    python -m examples.ppocr_det.data --split calib --count 200 --out /tmp/ppocr-work/calib
    python -m examples.ppocr_det.data --split heldout --count 300 --out /tmp/ppocr-work/heldout
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 320          # model input side, pixels: a multiple of 32 (DBNet's stride); see README for why 320
SPLITS = ("calib", "heldout")
PHOTO_DIR = Path(__file__).resolve().parents[2] / "calibration_data" / "images"
PHOTOS = {"calib": ("astronaut", "brick", "china", "coffee", "grass", "hubble_deep_field", "rocket"),
          "heldout": ("camera", "coins", "immunohistochemistry")}
SYNTHETIC = {"calib": ("flat", "gradient"), "heldout": ("noise", "stripes")}
FONT_DIRS = (Path("/usr/share/fonts"),)
SKIP_FONTS = ("DejaVuMathTeXGyre",)   # a maths font: Latin letters, but its metrics are odd for running text
WORDS = ("edge", "model", "quantize", "text", "detector", "int8", "float", "latency", "bundle", "device",
         "camera", "phone", "receipt", "total", "price", "street", "station", "coffee", "menu", "open", "closed",
         "exit", "parking", "north", "south", "invoice", "date", "amount", "paid", "order", "number", "table",
         "window", "garden", "river", "market", "label", "sample", "version", "Raspberry", "Android", "ONNX",
         "Monday", "Friday", "June", "2026", "42", "3.14", "No.7", "A-12", "EUR", "USD", "OK", "Tel.", "www")
SEEDS = {"calib": 1000, "heldout": 2000}   # added to the user's seed: each split has its own stream


@dataclass(frozen=True)
class Sample:
    """One rendered image (H, W, 3) uint8 with its line boxes (M, 4) xyxy int pixels and (H, W) uint8 mask."""

    image: np.ndarray
    boxes: np.ndarray
    mask: np.ndarray
    font: str
    background: str


# ---- sources ------------------------------------------------------------------------------------------------


def font_files() -> list[Path]:
    """Every TrueType font file on the machine (``fc-list``, else a walk of /usr/share/fonts), sorted."""
    try:
        out = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
        files = {Path(line) for line in out.splitlines() if line.lower().endswith(".ttf")}
    except (OSError, subprocess.SubprocessError):
        files = set()
    if not files:
        files = {p for d in FONT_DIRS if d.is_dir() for p in d.rglob("*.ttf")}
    return sorted(p for p in files if p.is_file() and not p.stem.startswith(SKIP_FONTS))


def family(path: Path) -> str:
    """The font family of a file name: ``LiberationSerif-BoldItalic.ttf`` -> ``LiberationSerif``."""
    return path.stem.split("-")[0]


def split_fonts(files: list[Path]) -> dict[str, list[Path]]:
    """Fonts per split: whole families, every third sorted family held out (files split alike if only one)."""
    families = sorted({family(f) for f in files})
    if len(families) >= 2:
        held = {f for i, f in enumerate(families) if i % 3 == 2} or {families[-1]}
        return {"calib": [f for f in files if family(f) not in held],
                "heldout": [f for f in files if family(f) in held]}
    if len(files) < 2:
        raise RuntimeError("need at least two TrueType fonts (fc-list found too few); install fonts-dejavu-core")
    return {"calib": files[0::2], "heldout": files[1::2]}


def photo_files(split: str) -> list[Path]:
    """The calibration_data/images files of the split's photos (named ``calib_NNNN_<photo>.jpg``), sorted."""
    names = PHOTOS[split]
    return sorted(p for p in PHOTO_DIR.glob("*.jpg") if p.stem.split("_", 2)[-1] in names)


# ---- backgrounds --------------------------------------------------------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float64)


def background(kind: str, rng: np.random.Generator, photos: list[Path]) -> np.ndarray:
    """A SIZE x SIZE x 3 uint8 background of ``kind`` (flat, gradient, noise, stripes or photo)."""
    if kind == "flat":
        img = np.broadcast_to(_colour(rng), (SIZE, SIZE, 3))
    elif kind == "gradient":
        t = np.linspace(0, 1, SIZE)
        t = t[None, :] if rng.random() < 0.5 else t[:, None]
        img = _colour(rng) * (1 - t[..., None]) + _colour(rng) * t[..., None]
    elif kind == "noise":  # smooth value noise: a coarse random grid, bilinearly upsampled, plus fine grain
        cells = int(rng.integers(3, 12))
        coarse = rng.integers(0, 256, (cells, cells, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float64)
        img = img + rng.normal(0, 8, img.shape)
    elif kind == "stripes":
        period = int(rng.integers(12, 60))
        axis = np.arange(SIZE)[None, :] if rng.random() < 0.5 else np.arange(SIZE)[:, None]
        on = ((axis // (period // 2)) % 2).astype(np.float64)[..., None]
        a, b = _colour(rng), _colour(rng)
        img = a * (1 - on) + (a + (b - a) * 0.35) * on   # low-contrast stripes: text must stay the figure
    else:
        img = _photo_crop(rng, photos)
    return np.clip(np.broadcast_to(img, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def _photo_crop(rng: np.random.Generator, photos: list[Path]) -> np.ndarray:
    with Image.open(photos[int(rng.integers(len(photos)))]) as im:
        im = im.convert("RGB")
        side = int(rng.integers(min(im.size) // 2, min(im.size) + 1))
        x, y = int(rng.integers(0, im.size[0] - side + 1)), int(rng.integers(0, im.size[1] - side + 1))
        return np.asarray(im.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.Resampling.BILINEAR))


# ---- text -----------------------------------------------------------------------------------------------------


def _text_colour(region: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour far from the region's mean luminance (>= 110 of 255), so every labelled line is readable."""
    lum = float(region.reshape(-1, 3).mean(0) @ (0.299, 0.587, 0.114))
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if abs(float(c @ (0.299, 0.587, 0.114)) - lum) >= 110:
            return int(c[0]), int(c[1]), int(c[2])
    return (0, 0, 0) if lum > 127 else (255, 255, 255)


def _line_text(rng: np.random.Generator) -> str:
    return " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), int(rng.integers(1, 5))))


def _free(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]], height: int) -> bool:
    """No overlap with the lines placed so far, with room between them: half a line height above and below,
    two heights beside (a narrower gap reads as a word space and a detector would rightly join the lines)."""
    x1, y1, x2, y2 = box
    gx, gy = max(12, 2 * height), max(6, height // 2)
    return all(x2 + gx <= a or b + gx <= x1 or y2 + gy <= c or d + gy <= y1 for a, c, b, d in taken)


def render(rng: np.random.Generator, fonts: list[Path], kinds: tuple[str, ...], photos: list[Path]) -> Sample:
    """One image: a background, then up to 7 non-overlapping lines, each box the exact ink extent."""
    kind = kinds[int(rng.integers(len(kinds)))]
    font_path = fonts[int(rng.integers(len(fonts)))]
    img = Image.fromarray(background(kind, rng, photos))
    draw = ImageDraw.Draw(img)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(2, 8)) * 4):   # attempts; lines that do not fit are skipped
        if len(boxes) >= 7:
            break
        font = ImageFont.truetype(str(font_path), int(rng.integers(14, 37)))
        text = _line_text(rng)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left, bottom - top
        if w >= SIZE - 8 or h >= SIZE - 8:
            continue
        x, y = int(rng.integers(4, SIZE - 4 - w)), int(rng.integers(4, SIZE - 4 - h))
        box = (x, y, x + w, y + h)
        if not _free(box, boxes, h):
            continue
        colour = _text_colour(np.asarray(img)[y:y + h, x:x + w], rng)
        draw.text((x - left, y - top), text, font=font, fill=colour)
        boxes.append(box)
    arr = np.asarray(img)
    boxes_arr = np.asarray(boxes, np.int64).reshape(-1, 4)
    return Sample(image=arr, boxes=boxes_arr, mask=mask_of(boxes_arr), font=font_path.name, background=kind)


def mask_of(boxes: np.ndarray) -> np.ndarray:
    """(SIZE, SIZE) uint8 index mask: 1 inside any xyxy box (right and bottom edges exclusive), 0 elsewhere."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for x1, y1, x2, y2 in np.asarray(boxes, np.int64).reshape(-1, 4):
        mask[y1:y2, x1:x2] = 1
    return mask


def samples(split: str, count: int, seed: int = 0):
    """Yield ``count`` Samples of ``split`` ("calib" or "heldout"), seeded."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    fonts = split_fonts(font_files())[split]
    photos = photo_files(split)
    kinds = SYNTHETIC[split] + (("photo",) if photos else ())
    rng = np.random.default_rng(seed + SEEDS[split])
    for _ in range(count):
        yield render(rng, fonts, kinds, photos)


def write(split: str, count: int, out: Path, seed: int = 0) -> Path:
    """Write ``out``/images/*.png, ``out``/masks/*.png (same names) and ``out``/boxes.json; return ``out``."""
    images, masks = out / "images", out / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(exist_ok=True)
    index = {}
    for i, s in enumerate(samples(split, count, seed)):
        name = f"{split}_{i:05d}.png"
        Image.fromarray(s.image).save(images / name)
        Image.fromarray(s.mask).save(masks / name)   # 2-D uint8: mode L
        index[name] = {"boxes": s.boxes.tolist(), "font": s.font, "background": s.background}
    (out / "boxes.json").write_text(json.dumps({"split": split, "seed": seed, "size": SIZE, "images": index},
                                               indent=0, sort_keys=True))
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
