"""Labels for detection and segmentation validation sets, in the formats people already have.

- PNG index masks (segmentation): one ``<image stem>.png`` per image in a folder; mode "L" or "P" (palette)
  whose pixel values are class indices; 255 marks pixels not to count (VOC's border / void).
- YOLO txt (detection): one ``<image stem>.txt`` per image; a line ``class cx cy w h``, coordinates normalised
  to the image (0-1); an empty file is an image without objects.
- COCO JSON (detection): one ``.json`` with ``images`` (file_name, width, height), ``annotations`` (image_id,
  category_id, bbox [x, y, w, h] in pixels) and ``categories``; class index i is the i-th category by id.

Labels go through the same geometry as the image (edgepack.inputs.data.preprocess_image: resize the short
side, centre crop, resize to the model input), so they line up with the model's input pixels: masks by nearest
neighbour, boxes scaled, shifted and clipped (a box left with no area is dropped). Every bad label is an
InputError naming the file: a box outside the image, an unknown class id, a mask whose size differs from its
image or that is a colour image, an image without a label file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import InputError

#: normalised YOLO coordinates may overshoot 0-1 by this much (rounding in exporters) before they are an error
YOLO_TOLERANCE = 1e-3
#: COCO pixel boxes may overshoot the image by this many pixels
COCO_TOLERANCE_PX = 1.0
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Geometry:
    """How preprocess_image maps original pixels to model-input pixels: x' = (x * sx - left) * fx."""

    sx: float
    sy: float
    left: int
    top: int
    crop: tuple[int, int]      # (width, height) of the centre crop
    fx: float
    fy: float
    resized: tuple[int, int]   # (width, height) after the short-side resize
    out: tuple[int, int]       # (width, height) of the model input


def geometry(size: tuple[int, int], input_shape: tuple[int, ...], pre) -> Geometry:
    """The transform preprocess_image applies to an image of ``size`` (width, height); mirrors its arithmetic."""
    from edgepack.inputs.data import crop_window

    height, width = int(input_shape[-2]), int(input_shape[-1])
    (cw, ch), resize = crop_window(height, width, pre.crop, pre.resize)
    scale = max(resize * cw / ch / size[0], resize / size[1])
    rw, rh = max(cw, round(size[0] * scale)), max(ch, round(size[1] * scale))
    return Geometry(sx=rw / size[0], sy=rh / size[1], left=(rw - cw) // 2, top=(rh - ch) // 2, crop=(cw, ch),
                    fx=width / cw, fy=height / ch, resized=(rw, rh), out=(width, height))


def transform_boxes(boxes: np.ndarray, geo: Geometry) -> np.ndarray:
    """(M, 4) xyxy original pixels -> model-input pixels, clipped to the input; boxes left without area are
    returned as NaN rows (the caller drops them with their classes)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip((b[:, [0, 2]] * geo.sx - geo.left) * geo.fx, 0, geo.out[0])
    b[:, [1, 3]] = np.clip((b[:, [1, 3]] * geo.sy - geo.top) * geo.fy, 0, geo.out[1])
    empty = (b[:, 2] - b[:, 0] < 1e-6) | (b[:, 3] - b[:, 1] < 1e-6)
    b[empty] = np.nan
    return b


def transform_mask(mask: np.ndarray, geo: Geometry) -> np.ndarray:
    """An (H, W) index mask through the image's geometry, nearest neighbour (class ids never blend)."""
    from PIL import Image

    from edgepack.inputs.data import MAX_RESIZED_PIXELS

    img = Image.fromarray(np.asarray(mask, np.uint8))
    if geo.resized[0] * geo.resized[1] > MAX_RESIZED_PIXELS:  # the crop's region only, as data._resize_crop does
        box = (geo.left / geo.sx, geo.top / geo.sy, (geo.left + geo.crop[0]) / geo.sx, (geo.top + geo.crop[1]) / geo.sy)
        img = img.resize(geo.crop, Image.Resampling.NEAREST, box=box)
    else:
        img = img.resize(geo.resized, Image.Resampling.NEAREST)
        img = img.crop((geo.left, geo.top, geo.left + geo.crop[0], geo.top + geo.crop[1]))
    if geo.crop != geo.out:
        img = img.resize(geo.out, Image.Resampling.NEAREST)
    return np.asarray(img, dtype=np.int64)


def _files(dataset, what: str) -> list[Path]:
    files = getattr(dataset, "files", None)
    if not files:
        raise InputError(f"{what} need the validation data as a folder of images (got {dataset.source})",
                         hint="pass --val IMAGE_FOLDER with --labels-dir")
    return [Path(f) for f in files]


def read_class_names(path: str | Path) -> list[str]:
    """A --labels file: one class name per line, in the model's class order (blank lines skipped). Label files here
    are read as utf-8-sig: the byte-order mark Windows Notepad writes was part of the first class name, whose class
    folder then did not match it ("class folders not in the labels file: a")."""
    try:
        return [ln.strip() for ln in Path(path).read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels file {path}: {exc}") from None


#: EXIF orientations that turn the stored picture a quarter turn (width and height swap when shown upright)
QUARTER_TURNS = (5, 6, 7, 8)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the image is shown: upright after its EXIF orientation, as the pixels are read
    (data.image_pixels) and as labelling tools draw boxes on it."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        try:
            turned = img.getexif().get(0x0112) in QUARTER_TURNS
        except Exception:  # noqa: BLE001 - broken EXIF: data.upright leaves such a picture as stored too
            turned = False
        return (h, w) if turned else (w, h)


def _label_file(folder: Path, image: Path, suffix: str, kind: str) -> Path:
    path = folder / (image.stem + suffix)
    if not path.is_file():
        raise InputError(f"image {image.name} has no label file: {path} not found",
                         hint=f"every validation image needs a {kind} named like it ({image.stem}{suffix})")
    return path


# ---- segmentation -----------------------------------------------------------------------------------------


def read_mask(path: Path, num_classes: int, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """One PNG index mask (mode L or P) -> (H, W) int64 class ids; errors name the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode, size = img.mode, img.size
            if mode not in ("L", "P", "1"):
                raise InputError(f"mask {path} is a {mode} image, not an index mask",
                                 hint="save masks as 8-bit single-channel (mode L) or palette (mode P) PNGs whose "
                                      "pixel values are class ids; colour-coded masks must be mapped to ids first")
            arr = np.asarray(img, dtype=np.int64)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read mask {path}: {type(exc).__name__}",
                         hint="masks are PNG images of class ids") from None
    if expect_size is not None and size != expect_size:
        raise InputError(f"mask {path} is {size[0]}x{size[1]} but its image is {expect_size[0]}x{expect_size[1]}",
                         hint="a mask must have its image's width and height")
    bad = np.unique(arr[(arr >= num_classes) & (arr != IGNORE_INDEX)])
    if bad.size:
        raise InputError(f"mask {path} has class id(s) {', '.join(map(str, bad[:5].tolist()))} but the model "
                         f"has {num_classes} classes (0-{num_classes - 1}; {IGNORE_INDEX} = ignore)",
                         hint="check the mask's palette indices and the model's output channels")
    return arr


def read_masks(dataset, folder: str, *, input_shape: tuple, preprocess, num_classes: int) -> list[np.ndarray]:
    """A mask for every image of ``dataset`` (a folder set), from ``folder``, in model-input pixels."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"labels folder {folder} not found (or not a folder)",
                         hint="segmentation labels are a folder of PNG masks named like the images")
    out, seen = [], set()
    for image in _files(dataset, "segmentation labels"):
        size = _image_size(image)
        mask = read_mask(_label_file(root, image, ".png", "PNG mask"), num_classes, expect_size=size)
        seen.update(np.unique(mask).tolist())
        out.append(transform_mask(mask, geometry(size, input_shape, preprocess)))
    if out and seen <= {0, IGNORE_INDEX} and IGNORE_INDEX in seen and num_classes > 1:
        v = IGNORE_INDEX
        raise InputError(f"every mask in {folder} holds only 0 and {v}: {v} marks pixels to ignore (the VOC "
                         "convention), so only the background would be scored",
                         hint=f"a binary mask saved as 0/{v} marks its foreground with {v}: write the class id "
                              f"instead (e.g. mask // {v} for class 1)")
    return out


# ---- detection ----------------------------------------------------------------------------------------------


def read_yolo(path: Path, size: tuple[int, int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One YOLO txt -> (boxes (M, 4) xyxy in original pixels, classes (M,) int64); errors name file and line."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read label file {path}: {exc}") from None
    boxes, classes = [], []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}, line {n}"
        try:
            if len(parts) != 5:
                raise ValueError
            cls, cx, cy, w, h = int(parts[0]), *(float(p) for p in parts[1:])
        except ValueError:
            raise InputError(f"{where}: expected 'class cx cy w h', got {line.strip()[:80]!r}",
                             hint="YOLO labels: an integer class id and four coordinates normalised to 0-1") from None
        if not 0 <= cls < num_classes:
            raise InputError(f"{where}: unknown class id {cls}; the model has {num_classes} classes "
                             f"(0-{num_classes - 1})", hint="class ids index the model's class outputs")
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if all(np.isfinite(v) for v in (w, h)) and min(w, h) <= 0:
            raise InputError(f"{where}: box (cx {cx}, cy {cy}, w {w}, h {h}) has no area",
                             hint="a box needs a width and a height above 0: fix or remove the line")
        if not all(np.isfinite(v) for v in (cx, cy, w, h)) or min(x1, y1) < -YOLO_TOLERANCE \
                or max(x2, y2) > 1 + YOLO_TOLERANCE:
            raise InputError(f"{where}: box (cx {cx}, cy {cy}, w {w}, h {h}) is outside the image",
                             hint="YOLO coordinates are normalised to the image: 0 <= cx +- w/2, cy +- h/2 <= 1")
        boxes.append([x1 * size[0], y1 * size[1], x2 * size[0], y2 * size[1]])
        classes.append(cls)
    return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(classes, np.int64)


def read_coco(path: Path, num_classes: int, class_names: list[str] | None = None, crowd: dict | None = None,
              ) -> dict[str, tuple[tuple[int, int], np.ndarray, np.ndarray]]:
    """A COCO JSON -> {file name: ((width, height), boxes xyxy pixels, classes)}; errors name the file.

    With ``class_names`` (--labels, in the model's class order) each category is matched to a class by its
    name: a COCO file numbers its categories as it likes (alphabetically, from 1, with gaps), and taking the
    i-th category by id as class i scored a detector against the wrong classes (mAP 29 for 90) without a word.
    Without names, the i-th category by id is class i, and ids with gaps are refused (which class is id 3 of
    {1, 3}?). An ``iscrowd`` annotation (a group of objects in one box) is no object to find: ``crowd``, when
    given, is filled with {file name: indices of its crowd boxes}, regions COCO's mAP matches detections to
    without counting them as objects or misses."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        images, anns, cats = doc["images"], doc.get("annotations", []), doc["categories"]
        ids = sorted(int(c["id"]) for c in cats)
        cat_names = {int(c["id"]): str(c.get("name", "")).strip() for c in cats}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"cannot read COCO labels {path}: {type(exc).__name__}: {str(exc)[:120]}",
                         hint="a COCO JSON has 'images', 'annotations' and 'categories' lists") from None
    if len(ids) > num_classes:
        raise InputError(f"{path} has {len(ids)} categories but the model has {num_classes} classes",
                         hint="pass --labels (the model's class names, one per line) to match categories by name")
    index = _coco_classes(path, ids, cat_names, class_names)
    out, by_id = {}, {}
    for im in images:
        try:
            name, size = Path(str(im["file_name"])).name, (int(im["width"]), int(im["height"]))
            by_id[im["id"]] = name
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: an image entry lacks id, file_name, width or height: {str(im)[:80]}") from None
        out[name] = (size, [], [])
    for ann in anns:
        try:
            name = by_id[ann["image_id"]]
            x, y, w, h = (float(v) for v in ann["bbox"])
            cid = int(ann["category_id"])
        except KeyError:
            wanted, kinds = ann.get("image_id"), {type(i).__name__ for i in by_id}
            typed = (f"image ids are {'/'.join(sorted(kinds))} but this one is {type(wanted).__name__}: write "
                     "them alike" if wanted is not None and type(wanted).__name__ not in kinds else
                     "every annotation's image_id must be an 'images' entry's id")
            raise InputError(f"{path}: annotation {ann.get('id', '?')} names an unknown image_id "
                             f"{wanted!r} or lacks bbox/category_id", hint=typed) from None
        except (TypeError, ValueError):
            raise InputError(f"{path}: annotation {ann.get('id', '?')} has a malformed bbox or category_id") from None
        if cid not in index:
            raise InputError(f"{path}: annotation {ann.get('id', '?')} ({name}) has unknown category_id {cid}",
                             hint=f"categories are {ids[:10]}")
        (iw, ih), boxes, classes = out[name]
        t = COCO_TOLERANCE_PX
        if all(np.isfinite(v) for v in (w, h)) and min(w, h) <= 0:
            raise InputError(f"{path}: annotation {ann.get('id', '?')} ({name}): box [{x}, {y}, {w}, {h}] has no "
                             "area", hint="a box needs a width and a height above 0: fix or remove the annotation")
        if not all(np.isfinite(v) for v in (x, y, w, h)) or x < -t or y < -t \
                or x + w > iw + t or y + h > ih + t:
            raise InputError(f"{path}: annotation {ann.get('id', '?')} ({name}): box [{x}, {y}, {w}, {h}] is "
                             f"outside the {iw}x{ih} image", hint="COCO boxes are [x, y, width, height] in pixels")
        if ann.get("iscrowd") and crowd is not None:
            crowd.setdefault(name, []).append(len(boxes))
        boxes.append([x, y, x + w, y + h])
        classes.append(index[cid])
    return {k: (s, np.asarray(b, np.float64).reshape(-1, 4), np.asarray(c, np.int64)) for k, (s, b, c) in out.items()}


def _coco_classes(path: Path, ids: list[int], cat_names: dict[int, str], class_names: list[str] | None,
                  ) -> dict[int, int]:
    """{category id: model class index}: by name with ``class_names``, else by id order (no gaps allowed)."""
    if class_names is None:
        if ids and ids[-1] - ids[0] + 1 != len(ids):
            raise InputError(f"{path}: category ids {ids[:12]} have gaps, so which model class each one is "
                             "cannot be told from the ids", hint="pass --labels (the model's class names, one per "
                             "line, in output order): categories are then matched by name")
        return {cid: i for i, cid in enumerate(ids)}
    wanted = {name: i for i, name in enumerate(class_names)}
    unknown = [f"{cid} {cat_names[cid]!r}" for cid in ids if cat_names[cid] not in wanted]
    if unknown:
        raise InputError(f"{path}: categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown[:6])} not among "
                         f"the --labels names ({', '.join(class_names[:8])}{', ...' if len(class_names) > 8 else ''})",
                         hint="categories are matched to the model's classes by name: spell them as in --labels")
    return {cid: wanted[cat_names[cid]] for cid in ids}


def coco_category_names(path: Path) -> list[str] | None:
    """The category names of a COCO JSON in id order (the class names when --labels is not given); None when
    they are missing or the file cannot be read (read_coco says why)."""
    try:
        cats = json.loads(Path(path).read_text(encoding="utf-8-sig"))["categories"]
        names = [str(c["name"]).strip() for c in sorted(cats, key=lambda c: int(c["id"]))]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return names if all(names) else None


def read_boxes(dataset, labels: str, *, input_shape: tuple, preprocess, num_classes: int,
               class_names: list[str] | None = None) -> list[dict]:
    """{"boxes": (M, 4) float32 xyxy model-input pixels, "classes": (M,) int64} for every image of ``dataset``,
    from a folder of YOLO txt files or a COCO .json (its categories matched by name to ``class_names``). A COCO
    crowd annotation (``iscrowd``) is no object: it goes to "crowd_boxes" / "crowd_classes" (present only then),
    regions where the mAP ignores detections, as COCO's own evaluation does; it used to be scored as one more
    object to find."""
    src = Path(labels)
    files = _files(dataset, "detection labels")
    crowd: dict[str, list[int]] = {}
    coco = (read_coco(src, num_classes, class_names, crowd) if src.is_file() and src.suffix.lower() == ".json"
            else None)
    if coco is None and not src.is_dir():
        raise InputError(f"detection labels {labels} not found: expected a folder of YOLO .txt files or a COCO "
                         ".json", hint="pass --labels-dir FOLDER_OR_JSON")
    out = []
    for image in files:
        size = _image_size(image)
        if coco is not None:
            if image.name not in coco:
                raise InputError(f"image {image.name} has no entry in {src}",
                                 hint="every validation image needs an 'images' entry (file_name) in the COCO JSON")
            declared, boxes, classes = coco[image.name]
            if declared != size:
                raise InputError(f"{src}: {image.name} is declared {declared[0]}x{declared[1]} but the file is "
                                 f"{size[0]}x{size[1]}", hint="fix width/height in the COCO JSON")
        else:
            boxes, classes = read_yolo(_label_file(src, image, ".txt", "YOLO .txt"), size, num_classes)
        moved = transform_boxes(boxes, geometry(size, input_shape, preprocess))
        keep = ~np.isnan(moved).any(1)
        group = np.zeros(len(boxes), bool)
        group[crowd.get(image.name, [])] = True
        target = {"boxes": moved[keep & ~group].astype(np.float32), "classes": classes[keep & ~group]}
        if group.any():
            target.update(crowd_boxes=moved[keep & group].astype(np.float32), crowd_classes=classes[keep & group])
        out.append(target)
    return out
