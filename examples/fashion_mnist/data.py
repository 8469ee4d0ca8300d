"""Fashion-MNIST data for the example: locate, read and preprocess the idx files.

The images come from the Debian package ``dataset-fashion-mnist`` (MIT), which installs the original
idx gzip files under ``/usr/share/datasets/fashion-mnist``. Preprocessing matches what the model expects:
28x28 grayscale -> bilinear resize to 96x96 -> replicate to 3 channels -> ``(pixel - 127) / 128``,
NCHW float32.

CLI::

    python -m examples.fashion_mnist.data --split train --count 200 --out calib.npz --seed 0
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 96
NUM_CLASSES = 10
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist",)
ENV_VAR = "FASHION_MNIST_DIR"
PREPROCESS_CHUNK = 2000


def _has_files(d: Path) -> bool:
    return all((d / name).is_file() for pair in FILES.values() for name in pair)


def _dpkg_dirs() -> list[Path]:
    """Directories where dpkg says dataset-fashion-mnist put its idx files (empty if unknown)."""
    try:
        out = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({Path(line).parent for line in out.splitlines() if line.endswith("-idx3-ubyte.gz")})


def find_data_dir() -> Path:
    """Return the folder holding the four Fashion-MNIST idx gzip files.

    Looks at ``$FASHION_MNIST_DIR``, the Debian install path, then ``dpkg -L dataset-fashion-mnist``.
    """
    candidates: list[Path] = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    candidates += [Path(d) for d in DEFAULT_DIRS]
    for d in candidates:
        if _has_files(d):
            return d
    for d in _dpkg_dirs():
        if _has_files(d):
            return d
    raise FileNotFoundError(
        "Fashion-MNIST idx files not found (looked in "
        + ", ".join(str(d) for d in candidates)
        + " and `dpkg -L dataset-fashion-mnist`). Install them with:\n"
        "    sudo apt-get install dataset-fashion-mnist\n"
        f"or point ${ENV_VAR} at a folder holding {', '.join(n for p in FILES.values() for n in p)}."
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read a gzip-compressed idx file into a uint8 array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(split: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw images (N, 28, 28) uint8 and labels (N,) int64 of ``split`` ('train' or 'test')."""
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    d = Path(data_dir) if data_dir is not None else find_data_dir()
    images_file, labels_file = FILES[split]
    images = read_idx(d / images_file)
    labels = read_idx(d / labels_file).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def preprocess(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 3, 96, 96) float32: bilinear resize, 3 channels, (pixel - 127) / 128."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]  # N,1,28,28
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = (x - 127.0) / 128.0
    return x.expand(-1, 3, -1, -1).contiguous().numpy()


def sample_indices(n_total: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct indices out of ``n_total``, drawn with a seeded generator."""
    if not 0 < count <= n_total:
        raise ValueError(f"count must be in 1..{n_total}, got {count}")
    return np.random.default_rng(seed).permutation(n_total)[:count]


def load_samples(split: str, count: int, seed: int = 0, offset: int = 0,
                 dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of ``count`` preprocessed images (N,3,96,96 ``dtype``) and labels (N, int64).

    The sample is ``count`` images of the seeded permutation starting at ``offset``: offset 200 skips the
    200 images of ``--count 200 --seed 0`` (the calibration set), so fine-tuning data stays disjoint from it.
    """
    images, labels = load_split(split)
    if offset < 0 or offset + count > len(images):
        raise ValueError(f"offset + count must be at most {len(images)}, got {offset} + {count}")
    idx = sample_indices(len(images), offset + count, seed)[offset:]
    x = np.empty((len(idx), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=dtype)
    for i in range(0, len(idx), PREPROCESS_CHUNK):  # chunks: 60,000 float32 images at once would be 6.6 GB
        x[i:i + PREPROCESS_CHUNK] = preprocess(images[idx[i:i + PREPROCESS_CHUNK]])
    return x, labels[idx]


def write_npz(split: str, count: int, path: str | Path, seed: int = 0, offset: int = 0,
              dtype: str = "float32") -> Path:
    """Write ``count`` seeded samples of ``split`` to ``path`` as an .npz with ``x`` and ``y``."""
    x, y = load_samples(split, count, seed, offset, dtype)
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m examples.fashion_mnist.data",
        description="Write a seeded, preprocessed Fashion-MNIST sample as .npz (x, y).",
    )
    p.add_argument("--split", choices=sorted(FILES), required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset", type=int, default=0,
                   help="skip this many images of the seeded draw (200: disjoint from --count 200 calibration)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="float16 halves the file (edgepack accepts it for fine-tuning data)")
    a = p.parse_args(argv)
    path = write_npz(a.split, a.count, a.out, a.seed, a.offset, a.dtype)
    print(f"wrote {path}: {a.count} {a.split} images, x (N,3,{IMAGE_SIZE},{IMAGE_SIZE}) {a.dtype}, y int64")


if __name__ == "__main__":
    main()
