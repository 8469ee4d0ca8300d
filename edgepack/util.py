"""Small shared helpers: digests, atomic writes, the progress protocol."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ProgressFn = Callable[[str, int, int], None]
"""progress(step, done, total): the library reports long work; the CLI decides how to show it."""


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice ("consider pre-processing") on the root logger, and its
    histogram calibrators print() progress to stdout, which would corrupt `--json` output. edgepack
    has already done the pre-processing and shows its own progress, so both are silenced."""
    import io

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """What a library writes to the process's stdout and stderr meanwhile (file descriptors 1 and 2: C++ and Python
    alike) is kept off the user's terminal and shown (on stderr) only with --debug (a root logger at DEBUG). For the
    ONNX exporters: the legacy one prints the model's whole TorchScript graph from C++ when it gives up, and the
    torch.export one then logs tracebacks and version-converter notes, on a build that goes on and succeeds."""
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as caught:
        for fd in saved:
            os.dup2(caught.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            caught.seek(0)
            text = caught.read()
            if text and logging.getLogger().isEnabledFor(logging.DEBUG):
                os.write(2, text)


def no_progress(step: str, done: int, total: int) -> None:
    """The default progress sink: the library never prints."""


def spread_indices(n: int, count: int) -> np.ndarray:
    """At most ``count`` indices into ``n`` items, evenly spread from first to last, sorted and fixed (a
    deterministic subset of calibration samples that covers the whole set, not just its head)."""
    return np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(int))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_arrays(*arrays: np.ndarray | None) -> str:
    """Digest of arrays' dtype, shape and bytes: identifies a calibration or validation set."""
    digest = hashlib.sha256()
    for arr in arrays:
        if arr is None:
            digest.update(b"none")
            continue
        chunks = arr.chunks() if hasattr(arr, "chunks") else None  # an array kept compact (inputs.data.PixelArray)
        if chunks is None:
            arr = np.ascontiguousarray(arr)
            chunks = [arr]
        digest.update(f"{arr.dtype.str}{tuple(arr.shape)}".encode())
        for part in chunks:  # the bytes in place: no copy of the set
            digest.update(memoryview(np.ascontiguousarray(part)).cast("B") if part.size else b"")
    return digest.hexdigest()


MANIFEST_DIGEST = "manifest_sha256"
#: an OpenSSH signature of manifest.json beside it (edgepack.bundle.signing); not listed in the manifest it signs
SIGNATURE = "manifest.json.sig"


def manifest_digest(man: dict) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace) without its own digest field.

    The manifest lists every other file's digest; this one makes an edited manifest.json detectable too.
    """
    body = {k: v for k, v in man.items() if k != MANIFEST_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_json(man: dict) -> str:
    """The manifest.json text, with its self-digest set (in place) last."""
    man.pop(MANIFEST_DIGEST, None)
    man[MANIFEST_DIGEST] = manifest_digest(man)
    return json.dumps(man, indent=2) + "\n"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write beside the final name and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def host_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def require(packages: tuple[str, ...], *, extra: str | None, what: str) -> None:
    """Raise a usage error (exit 2) naming the pip command when an optional dependency is not installed."""
    import importlib.util

    from edgepack.errors import InputError

    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            return True

    missing = [p for p in packages if absent(p)]
    if missing:
        hint = f"pip install 'edgepack[{extra}]'" if extra else f"pip install {' '.join(missing)}"
        raise InputError(f"{what} needs {', '.join(missing)}, which is not installed", hint=hint)
