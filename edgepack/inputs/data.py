"""Calibration and validation sets: image folders (decoded by Pillow), .npz arrays, or text files.

Every set becomes a `Dataset`: NCHW float32 inputs (or, for text models, {input name: (N, L) int64} token
arrays), optional int64 labels, class names when a
folder gives them, and a digest recorded in the manifest. Sampling is seeded and listings sorted,
so the same files and seed always give the same set.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgepack.config import Preprocess
from edgepack.errors import InputError
from edgepack.util import ProgressFn, no_progress, sha256_arrays

if TYPE_CHECKING:
    from edgepack.inputs.sources import TextInfo

#: Model inputs: one array (images) or token arrays by input name (text models).
Inputs = np.ndarray | dict[str, np.ndarray]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")
MAX_SKIPPED_FRACTION = 0.5
MAX_ABS_INPUT = 1e6      # |x| beyond this is not a preprocessed input (16-bit pixels are 65,535 at most)
MAX_LABEL = 2**31 - 1    # a class index, not a number from somewhere else
#: a short-side resize bigger than this (pixels) resizes only the centre crop's region (Pillow's resize box): a
#: 4,000 x 1 strip (a 12 kB PNG) was scaled whole to 1,024,000 x 256 (1 GB) for a 224 px input, and a longer
#: one ran the machine out of memory. Photos never come near it (a 10:1 panorama at 585 px: 3.4 MP), so their
#: pixels stay those of the whole-image resize; the box's differ by about one 8-bit step.
MAX_RESIZED_PIXELS = 16_000_000


@dataclass
class Dataset:
    """Model-ready samples. x: (N, C, H, W) float32 (a calibration folder's as a PixelArray, which reads as
    one), or {input name: (N, L) int64} for text; y: (N,) int64
    or None. Detection and segmentation sets carry per-sample ``targets`` instead (masks, boxes: see
    edgepack.inputs.labels); ``files`` are the image files kept, in sample order (folders only)."""

    x: Inputs
    y: np.ndarray | None
    source: str
    class_names: list[str] | None = None
    skipped: list[str] = field(default_factory=list)
    files: list[str] | None = None
    targets: list | None = None
    empty_classes: list[str] = field(default_factory=list)   # class folders that hold no image (still classes)
    truncated: int = 0   # texts longer than the model's max_length tokens, cut to it (as the device's run.py cuts)

    @property
    def truth(self):
        """What the task scores against: the per-sample targets when there are any, else the class labels y."""
        return self.targets if self.targets is not None else self.y

    @property
    def digest(self) -> str:
        arrays = [self.x[k] for k in sorted(self.x)] if isinstance(self.x, dict) else [self.x]  # PixelArray: chunks
        targets = [a for t in self.targets or [] for a in ([t[k] for k in sorted(t)] if isinstance(t, dict)
                                                            else (t,))]
        return sha256_arrays(*arrays, self.y, *targets)

    def __len__(self) -> int:
        return num_samples(self.x)

    def subset(self, idx: np.ndarray) -> Dataset:
        """The samples ``idx``, in that order, with their labels, targets and files."""
        x = {k: v[idx] for k, v in self.x.items()} if isinstance(self.x, dict) else self.x[idx]
        return dataclasses.replace(self, x=x, y=None if self.y is None else self.y[idx],
                                   targets=None if self.targets is None else [self.targets[i] for i in idx],
                                   files=None if self.files is None else [self.files[i] for i in idx])


class PixelArray:
    """(N, C, H, W) float32 model inputs kept as the 8-bit pixels they are made from: a quarter of the memory
    (1,000 crops at 224 px: 150 MB instead of 602 MB). Indexing and iterating normalise the rows asked for with
    `normalise`, the arithmetic of `preprocess_image`, so every value is bit-identical to the float array it
    stands for; ``np.asarray`` gives that whole array. Calibration reads a few samples at a time, which is why
    calibration sets are held this way."""

    dtype = np.dtype(np.float32)
    ndim = 4
    CHUNK = 64  # rows normalised at a time by chunks()

    def __init__(self, pixels: np.ndarray, pre: Preprocess):
        self.pixels, self.pre = pixels, pre

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, h, w, c = self.pixels.shape
        return n, c, h, w

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        rows = self.pixels[key]
        out = normalise(rows[None], self.pre)[0] if rows.ndim == 3 else normalise(rows, self.pre)
        return out[rest] if rest else out

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype=None, copy=None):
        out = normalise(self.pixels, self.pre)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getattr__(self, name):  # any other ndarray attribute (mean, std, ...): the whole float array's
        if name.startswith("__") or name in ("pixels", "pre"):
            raise AttributeError(name)
        return getattr(np.asarray(self), name)

    def chunks(self):
        """The float rows, CHUNK at a time, in order."""
        for i in range(0, len(self), self.CHUNK):
            yield self[i:i + self.CHUNK]


def num_samples(x: Inputs) -> int:
    """Number of samples in model inputs."""
    return int(next(iter(x.values())).shape[0]) if isinstance(x, dict) else int(x.shape[0])


def rows(x: Inputs, start: int, stop: int) -> Inputs:
    """Samples start..stop-1 of model inputs (every input of a text model alike)."""
    return {k: v[start:stop] for k, v in x.items()} if isinstance(x, dict) else x[start:stop]


def take(x: Inputs, idx) -> Inputs:
    """The samples at indices ``idx`` of model inputs (every input alike)."""
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


def sample_rows(x: Inputs, idx) -> Inputs:
    """The samples at ``idx`` as plain contiguous arrays: float32 images (a compact PixelArray decoded, only
    those rows), or each input's own dtype for several inputs."""
    if isinstance(x, dict):
        return {k: np.ascontiguousarray(v[idx]) for k, v in x.items()}
    return np.ascontiguousarray(np.asarray(x[idx], np.float32))


def feed(x: Inputs, input_name: str, start: int, stop: int) -> dict[str, np.ndarray]:
    """An onnxruntime feed of samples start..stop-1: every input by name, or one array as ``input_name``."""
    return rows(x, start, stop) if isinstance(x, dict) else {input_name: x[start:stop]}


def load_text(path: str, *, text: TextInfo, count: int | None, seed: int, role: str,
              class_names: list[str] | None = None) -> Dataset:
    """Texts (.txt / .jsonl / .csv, see edgepack.inputs.text_files.read_texts) tokenized as the device will: a seeded
    subset of ``count`` texts, {input name: (N, max_length) int64} with optional labels."""
    from edgepack.inputs import text as text_mod
    from edgepack.inputs import text_files

    if not Path(path).is_file():
        raise InputError(f"{role} data not found: {path}",
                         hint="text models take a .txt (one text per line), .jsonl or .csv file")
    texts, y = text_files.read_texts(path, class_names=class_names)
    idx = sample_indices(len(texts), count, seed)
    stats: dict = {}
    x = text_mod.tokenize([texts[i] for i in idx], text.tokenizer, text.max_length, text.input_names, stats)
    return Dataset(x=x, y=None if y is None else y[idx], source=str(path), truncated=stats["truncated"])


def load_tensors(path: str, *, specs: list[dict], count: int | None, seed: int, role: str, hint: str) -> Dataset:
    """Inputs that are not photos (several inputs, a waveform, uint8 pixels): an .npz with one array per input name
    ({name: (N, ...)}; a single input may be ``x``), float inputs as floats, integer inputs as integers, the model
    file's shapes; optional integer labels ``y`` (unless an input is named y: a forward(x, y) was refused for
    labels that were its second input); a seeded subset of ``count`` samples, every input alike."""
    where = f"{role} file {path}"
    arrays = _read_named_npz(Path(path), role, hint)
    names = [s["name"] for s in specs]
    if len(names) == 1 and names[0] not in arrays and "x" in arrays:  # one input: the usual x= works too
        arrays[names[0]] = arrays.pop("x")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"{where} has no array for input {', '.join(missing)} (found: "
                         f"{', '.join(sorted(arrays)) or 'nothing'}); the model has {len(names)} input"
                         f"{'s' if len(names) > 1 else ''} ({', '.join(names)})", hint=hint)
    extra = sorted(set(arrays) - set(names) - {"y"})
    if extra:
        raise InputError(f"{where} holds arrays the model does not take: {', '.join(extra)} (inputs: "
                         f"{', '.join(names)})", hint=hint)
    x = {s["name"]: _check_named(arrays[s["name"]], s, f"{where}, input {s['name']}", hint) for s in specs}
    n = {k: len(v) for k, v in x.items()}
    if len(set(n.values())) != 1:
        raise InputError(f"{where}: the inputs hold different numbers of samples "
                         f"({', '.join(f'{k} {v}' for k, v in n.items())})", hint="one row per sample in every array")
    total = next(iter(n.values()))
    if total == 0:
        raise InputError(f"{where}: the arrays hold no samples")
    y = None if "y" in names else _check_y(arrays.get("y"), total, where)  # an input named y is no labels
    idx = sample_indices(total, count, seed)
    return Dataset(x={k: np.ascontiguousarray(v[idx]) for k, v in x.items()},
                   y=None if y is None else y[idx], source=str(path))


def npz_specs(path: str | None, names: list[str], model: str) -> list[dict]:
    """Input specs {name, shape [N, ...], dtype} of a PyTorch model whose forward takes ``names``, read from the
    calibration .npz that holds one array per name (their shapes and dtypes are the model's inputs)."""
    hint = (f"save one array per forward argument, preprocessed: numpy.savez('calib.npz', "
            f"{', '.join(n + '=...' for n in names)}), and pass it as --calib")
    if not path:
        raise InputError(f"{model}'s forward takes {len(names)} inputs ({', '.join(names)}): the shipped calibration "
                         "photos cannot feed it", hint=hint)
    headers = npz_headers(path)
    if not headers:
        _read_named_npz(Path(path), "calibration", hint)  # says why: missing, not an .npz, unreadable
    missing = [n for n in names if n not in headers]
    if missing:
        raise InputError(f"calibration file {path} has no array for forward argument {', '.join(missing)} (found: "
                         f"{', '.join(sorted(headers)) or 'nothing'}); {model}'s forward takes "
                         f"{', '.join(names)}", hint=hint)
    flat = [n for n in names if not headers[n][0]]
    if flat:
        raise InputError(f"calibration file {path}: {', '.join(flat)} is a scalar, not (N, ...) samples", hint=hint)
    # float samples feed a float32 model (numpy's default float64 too); integers (ids, uint8 pixels) keep their type
    return [{"name": n, "shape": ["N", *headers[n][0][1:]],
             "dtype": "float32" if np.issubdtype(headers[n][1], np.floating) else headers[n][1].name}
            for n in names]


def npz_headers(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} of an .npz, read from the headers only (not the data); {} when it cannot be
    read (the loader then says why)."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                if not member.endswith(".npy"):
                    continue
                with z.open(member) as f:
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
                    if read:
                        shape, _, dtype = read(f)
                        headers[member[:-4]] = (tuple(shape), dtype)
    except (OSError, ValueError, zipfile.BadZipFile):
        return {}
    return headers


def _read_named_npz(p: Path, role: str, hint: str) -> dict[str, np.ndarray]:
    if not p.is_file() or p.suffix.lower() != ".npz":
        raise InputError(f"{role} data {p} " + ("not found" if not p.exists() else "is not an .npz file"), hint=hint)
    try:
        with np.load(p, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {role} file {p}: {str(exc)[:200]}", hint=hint) from None


def _check_named(a: np.ndarray, spec: dict, at: str, hint: str) -> np.ndarray:
    """One input's samples checked against the model's shape and dtype, cast to that dtype."""
    want = np.dtype(spec["dtype"])
    if a.ndim != len(spec["shape"]) or tuple(a.shape[1:]) != tuple(int(d) for d in spec["shape"][1:]):
        raise InputError(f"{at}: shape {list(a.shape)}, the model takes (N, {', '.join(map(str, spec['shape'][1:]))})",
                         hint=hint)
    if np.issubdtype(want, np.floating):
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"{at}: dtype {a.dtype}, the model takes {want} (already preprocessed)", hint=hint)
        if not np.isfinite(a).all():
            raise InputError(f"{at}: contains NaN or infinite values", hint="check the preprocessing")
        _check_range(a, at)
    elif np.issubdtype(a.dtype, np.floating) and not np.array_equal(a, np.round(a)):
        raise InputError(f"{at}: dtype {a.dtype} with fractions, the model takes {want}", hint=hint)
    return a.astype(want, copy=False)


def load(path: str, *, input_shape: tuple[int, ...], preprocess: Preprocess, count: int | None, seed: int,
         role: str, progress: ProgressFn = no_progress) -> Dataset:
    """Load ``path`` (folder or .npz) for ``role`` ("calibration" or "validation")."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{role} data not found: {path}", hint="pass a folder of images or an .npz file")
    if p.is_dir():
        return _load_folder(p, input_shape, preprocess, count, seed, role, progress)
    if p.suffix.lower() == ".npz":
        return _load_npz(p, input_shape, count, seed, role)
    raise InputError(f"{role} data {path} is neither a folder of images nor an .npz file",
                     hint="an .npz needs an array 'x' (N,C,H,W float32) and optional integer labels 'y'")


def count(path: str, role: str = "calibration") -> int | None:
    """How many samples ``path`` (folder or .npz) holds as a ``role`` set, without decoding them; None when it cannot
    tell."""
    p = Path(path)
    if p.is_dir():
        return len(_list_images(p, role)[0])
    if p.suffix.lower() == ".npz" and p.is_file():
        shape = npz_headers(p).get("x", ((), None))[0]  # the header only, not the data
        return int(shape[0]) if shape else None
    return None


def default_calibration() -> str:
    """The shipped natural-photo calibration set (calibration_data/images), used when --calib is not given."""
    path = Path(__file__).resolve().parents[2] / "calibration_data" / "images"
    if not path.is_dir():
        raise InputError("no --calib given", hint="pass --calib FOLDER_OR_NPZ")
    return str(path)


def sample_indices(n: int, count: int | None, seed: int) -> np.ndarray:
    """Sorted, seeded subset of range(n) of size count (all of them when count is None or >= n)."""
    if count is None or count >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


def _load_npz(path: Path, input_shape: tuple[int, ...], count: int | None, seed: int, role: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {role} file {path}: {str(exc)[:200]}",
                         hint="write it with numpy.savez(path, x=..., y=...) (no object arrays)") from None
    if "x" not in arrays:
        raise InputError(f"{role} file {path} has no array 'x' (found: {', '.join(sorted(arrays)) or 'nothing'})",
                         hint="save inputs as x: numpy.savez(path, x=inputs, y=labels)")
    x, y = arrays["x"], arrays.get("y")
    x = _check_x(x, input_shape, f"{role} file {path}", keep_half=role == "fine-tuning")
    y = _check_y(y, len(x), f"{role} file {path}")
    if count is None or count >= len(x):  # all of it: no copy (a large fine-tuning set is gigabytes)
        return Dataset(x=np.ascontiguousarray(x), y=y, source=str(path))
    idx = sample_indices(len(x), count, seed)
    return Dataset(x=np.ascontiguousarray(x[idx]), y=None if y is None else y[idx], source=str(path))


def _check_x(x: np.ndarray, input_shape: tuple[int, ...], where: str, keep_half: bool = False) -> np.ndarray:
    """Validated float32 inputs; float16 stays float16 when ``keep_half`` (large fine-tuning sets, cast per
    batch by edgepack.finetune)."""
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{where}: x has dtype {x.dtype}, expected float32 (already preprocessed)",
                         hint="apply the model's preprocessing and save x as float32")
    if x.ndim != len(input_shape):
        raise InputError(f"{where}: x has rank {x.ndim} (shape {list(x.shape)}), the model input has rank "
                         f"{len(input_shape)} ({list(input_shape)})", hint="x must be (N, C, H, W)")
    if tuple(x.shape[1:]) != tuple(input_shape[1:]):
        channels_last = x.ndim == 4 and tuple(x.shape[1:]) == tuple(input_shape[i] for i in (2, 3, 1))
        raise InputError(f"{where}: samples have shape {list(x.shape[1:])}, the model input is "
                         f"{list(input_shape[1:])}" + (" (the data is channels-last, NHWC)" if channels_last else ""),
                         hint="save it channels-first: numpy.savez(path, x=x.transpose(0, 3, 1, 2), ...)"
                         if channels_last else "resize the data or pass --input-shape")
    if len(x) == 0:
        raise InputError(f"{where}: x holds no samples")
    if not np.isfinite(x).all():
        raise InputError(f"{where}: x contains NaN or infinite values", hint="check the preprocessing")
    _check_range(x, where)
    return x if keep_half and x.dtype == np.float16 else x.astype(np.float32, copy=False)


def _check_range(x, where: str) -> None:
    """Inputs beyond +-MAX_ABS_INPUT are not preprocessed data, and overflow INT8 calibration (scale = range/255)."""
    parts = x.chunks() if isinstance(x, PixelArray) else [x]
    peak = max((max(float(np.max(p)), -float(np.min(p))) for p in parts if p.size), default=0.0)
    if peak > MAX_ABS_INPUT:
        raise InputError(f"{where}: values reach {peak:.3g}, beyond +-{MAX_ABS_INPUT:g}: not preprocessed model "
                         "inputs, and INT8 calibration overflows on them", hint="check the preprocessing (scale, "
                         "mean, std) or the arrays in the file")


def _check_y(y: np.ndarray | None, n: int, where: str) -> np.ndarray | None:
    if y is None:
        return None
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != n:
        raise InputError(f"{where}: y must be {n} integer labels (got dtype {y.dtype}, shape {list(y.shape)})",
                         hint="labels are class indices 0..C-1, one per sample")
    if (y < 0).any():
        raise InputError(f"{where}: y has negative labels")
    if y.size and int(y.max()) > MAX_LABEL:
        raise InputError(f"{where}: y has label {int(y.max())}, not a class index",
                         hint="labels are class indices 0..C-1")
    return y.astype(np.int64)


#: endings Pillow registers that are no picture it can decode here: save-only formats (PDF, Palm), stubs that need
#: a handler (HDF5, BUFR, GRIB, Windows metafiles), MPEG video, and PostScript (Ghostscript). A photo folder's
#: README.pdf, video clips or a Keras .h5 were listed as photos, then skipped as unreadable and counted against
#: MAX_SKIPPED_FRACTION (3 photos beside 4 clips: "not readable images")
NOT_PICTURES = frozenset({".pdf", ".palm", ".h5", ".hdf", ".bufr", ".grib", ".wmf", ".emf", ".mpeg", ".mpg", ".eps",
                          ".ps"})


@functools.lru_cache(maxsize=1)
def _image_suffixes() -> frozenset[str]:
    """File name endings Pillow opens (and IMAGE_SUFFIXES), bar NOT_PICTURES."""
    from PIL import Image

    Image.init()
    return (frozenset(IMAGE_SUFFIXES) | frozenset(s.lower() for s in Image.registered_extensions())) - NOT_PICTURES


def _visible_files(folder: Path, recursive: bool) -> list[Path]:
    """Image files under ``folder`` (and its sub-folders when ``recursive``) whose path holds no hidden part, sorted.
    Other files (a YOLO label .txt beside its image, a dataset's README or annotations .json) are not images: they
    were sampled and skipped as unreadable, and a darknet-layout folder (half .txt) with --val-samples failed."""
    found = _walk(folder) if recursive else folder.iterdir()
    images = _image_suffixes()
    return sorted(f for f in found if f.is_file() and f.suffix.lower() in images
                  and not any(p.startswith(".") for p in f.relative_to(folder).parts))


def _holds_files(folder: Path) -> bool:
    """Whether any file that is not hidden lies under ``folder``."""
    return any(f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts) for f in _walk(folder))


def _walk(folder: Path):
    """Every path under ``folder``, through symlinked sub-folders too (as torchvision's ImageFolder reads them:
    Path.rglob before Python 3.13 does not follow them, so a class folder of symlinked photo folders was empty),
    each real folder once (a symlink loop ends)."""
    import os

    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield from (Path(top) / name for name in (*dirs, *files))


def _list_images(root: Path, role: str = "validation") -> tuple[list[Path], list[str] | None, list[int] | None]:
    """Image files under root, sorted; class names and labels when root is ImageFolder-style (a sub-folder per
    class). A folder with images both at its top level and in sub-folders is no ImageFolder: its labels dropped
    the top-level images without a word (40 photos beside a `thumbs/` sub-folder were read as one class of 8
    thumbnails). A calibration set needs no labels, so it reads every image of such a tree; any other set is refused
    with the question it raises. Every class sub-folder is a class, in sorted order as torchvision's ImageFolder
    numbers them, an empty one too (Dataset.empty_classes): dropping it moved every later folder down one class
    (a/, b/ empty, c/: c scored as class 1) and a 3-class model was told the folder "has 2 class folders". A
    sub-folder of other files only (annotations/, labels/) is no class."""
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    within = {d.name: _visible_files(d, recursive=True) for d in subdirs}
    within = {name: found for name, found in within.items() if found or not _holds_files(root / name)}
    classes = [name for name, found in within.items() if found]
    loose = _visible_files(root, recursive=False)
    if classes and loose and role == "calibration":  # every image of the tree, as one sorted listing
        return sorted([*loose, *(f for found in within.values() for f in found)]), None, None
    if classes and loose:
        raise InputError(f"{role} folder {root} has {len(loose)} image(s) at its top level (e.g. {loose[0].name}) "
                         f"and sub-folders with images ({', '.join(classes[:4])}{' ...' if len(classes) > 4 else ''})"
                         ": is it one set of photos or a folder per class?",
                         hint="for labels by class, move every image into its class sub-folder; for unlabelled "
                              "photos, move the sub-folders out (or point at one folder of images)")
    if classes:
        files, labels = [], []
        for label, name in enumerate(within):  # an empty class folder keeps its place (and number)
            files += within[name]
            labels += [label] * len(within[name])
        return files, list(within), labels
    return loose, None, None


def _load_folder(root: Path, input_shape: tuple[int, ...], pre: Preprocess, count: int | None, seed: int,
                 role: str, progress: ProgressFn) -> Dataset:
    files, classes, labels = _list_images(root, role)
    if not files:
        raise InputError(f"{role} folder {root} holds no image files",
                         hint=f"put images ({', '.join(IMAGE_SUFFIXES[:4])}, ...) in it, or class sub-folders of them")
    idx = sample_indices(len(files), count, seed)
    # 8-bit pixels, filled in place (1,000 crops at 224 px: 150 MB; as float32 inputs 602 MB, and a list
    # stacked afterwards would hold them twice)
    _, channels, height, width = (int(d) for d in input_shape)
    if channels not in (1, 3):
        nchw = f"{input_shape[0]},{input_shape[3]},{input_shape[1]},{input_shape[2]}"
        raise InputError(f"input shape {','.join(str(int(d)) for d in input_shape)} has {channels} channels; image "
                         "models take 1 (grey) or 3 (RGB/BGR)",
                         hint=f"the shape is N,C,H,W (channels second); for NHWC {tuple(input_shape)} pass "
                              f"--input-shape {nchw}" if int(input_shape[3]) in (1, 3) else
                              "the shape is N,C,H,W (channels second)")
    pixels = np.empty((len(idx), height, width, channels), np.uint8)
    kept_labels, skipped, kept = [], [], []
    for i, k in enumerate(idx):
        progress(f"reading {role} images", i, len(idx))
        try:
            pixels[len(kept)] = image_pixels(files[k], input_shape, pre)
            kept.append(str(files[k]))
            if labels is not None:
                kept_labels.append(labels[k])
        except InputError as exc:
            skipped.append(f"{files[k].name}: {exc.message}")
    progress(f"reading {role} images", len(idx), len(idx))
    _check_skipped(root, role, skipped, len(idx))
    y = np.asarray(kept_labels, dtype=np.int64) if labels is not None else None
    pixels = pixels[:len(kept)].copy() if len(kept) < len(pixels) else pixels
    # calibration sets are the large ones (and only read a few samples at a time): kept as pixels
    x = PixelArray(pixels, pre) if role == "calibration" else normalise(pixels, pre)
    _check_range(x, f"{role} folder {root} after preprocessing")
    present = set(labels or ())
    empty = [name for i, name in enumerate(classes) if i not in present] if classes and labels else []
    return Dataset(x=x, y=y, source=str(root), class_names=classes, skipped=skipped, files=kept, empty_classes=empty)


def _check_skipped(root: Path, role: str, skipped: list[str], total: int) -> None:
    if not skipped:
        return
    if len(skipped) > MAX_SKIPPED_FRACTION * total:
        raise InputError(f"{role} folder {root}: {len(skipped)} of {total} files are not readable images "
                         f"(e.g. {skipped[0]})", hint="remove non-image files or point at the right folder")
    log.info("%s folder %s: skipped %d unreadable file(s), e.g. %s", role, root, len(skipped), skipped[0])


def upright(img, image_ops):
    """The image as viewers show it: turned by its EXIF orientation (phone photos store it sideways and say so).
    Labels are drawn on the upright picture, and the bundle's run.py reads it the same way. A malformed EXIF
    block leaves the picture as stored."""
    try:
        return image_ops.exif_transpose(img)
    except Exception:  # noqa: BLE001 - Pillow raises several types for broken EXIF; the pixels are still fine
        return img


def _eight_bit(img):
    """A 16-bit (or 32-bit integer) greyscale image rescaled to 0-255, as 8-bit images are: Pillow's convert()
    would clip it at 255 and turn most of it white. A float image (mode F, a TIFF of 0-1 values) is scaled by
    255 when it holds no value above 1 (it was read as black), else clipped to 0-255. The bundle's run.py has the
    same function."""
    from PIL import Image

    if img.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return img
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8))


def preprocess_image(path: Path, input_shape: tuple[int, ...], pre: Preprocess) -> np.ndarray:
    """Decode with Pillow, resize the short side, centre crop, scale and normalise -> (C, H, W) float32."""
    return normalise(image_pixels(path, input_shape, pre)[None], pre)[0]


def normalise(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(N, H, W, C) 8-bit pixels (in the model's channel order) -> (N, C, H, W) float32 model inputs."""
    arr = pixels.astype(np.float32)
    arr = (arr * pre.scale - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2), dtype=np.float32)


def crop_window(height: int, width: int, crop: int | None, resize: int | None) -> tuple[tuple[int, int], int]:
    """((width, height) of the centre crop, short-side resize) for a model input of height x width pixels.

    The crop has the input's aspect ratio, ``crop`` (default: the input's height) pixels high, and the image is
    scaled so the crop fits ``resize / crop`` times over (default 1 / 0.875); for a square input that is the usual
    "resize the short side to ``resize``, centre crop ``crop``". A square crop stretched to a non-square input
    squashed every image (a 48 x 48 crop stretched to an OCR recogniser's 48 x 320)."""
    crop_h = crop or height
    crop_w = max(1, round(crop_h * width / height))
    return (crop_w, crop_h), resize or int(round(crop_h / 0.875))


def _resize_crop(img, crop: tuple[int, int], resize: int):
    """Short side resized (``resize`` pixels for the crop's aspect ratio), then the centre ``crop`` (width,
    height) cut out; above MAX_RESIZED_PIXELS only the crop's region is resized. The bundle's run.py does the same."""
    from PIL import Image

    (crop_w, crop_h), (w, h) = crop, img.size
    scale = max(resize * crop_w / crop_h / w, resize / h)
    rw, rh = max(crop_w, round(w * scale)), max(crop_h, round(h * scale))
    left, top = (rw - crop_w) // 2, (rh - crop_h) // 2
    if rw * rh > MAX_RESIZED_PIXELS:
        fx, fy = w / rw, h / rh
        return img.resize(crop, Image.Resampling.BILINEAR,
                          box=(left * fx, top * fy, (left + crop_w) * fx, (top + crop_h) * fy))
    return img.resize((rw, rh), Image.Resampling.BILINEAR).crop((left, top, left + crop_w, top + crop_h))


def image_pixels(path: Path, input_shape: tuple[int, ...], pre: Preprocess) -> np.ndarray:
    """Decode with Pillow, resize the short side, centre crop -> (H, W, C) uint8 in the model's channel order."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    height, width = int(input_shape[-2]), int(input_shape[-1])
    (crop_w, crop_h), resize = crop_window(height, width, pre.crop, pre.resize)
    try:
        with warnings.catch_warnings(), Image.open(path) as img:  # 89-179 MP: Pillow warns on stderr; said below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = upright(img, ImageOps)
            img = _eight_bit(img).convert("L" if pre.channel_order == "L" else "RGB")
            img = _resize_crop(img, (crop_w, crop_h), resize)
            if (crop_w, crop_h) != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise InputError(f"too large to read safely ({exc}); downscale it (a 50 MP copy is plenty for a "
                         f"{width} x {height} input)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"not a readable image ({type(exc).__name__})") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if pre.channel_order == "BGR":
        arr = arr[..., ::-1]
    return np.ascontiguousarray(arr)
