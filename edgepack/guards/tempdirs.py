"""Work folders that name their owner, so a process killed with SIGKILL leaves nothing for long.

``workdir()`` makes ``$TMPDIR/edgepack-<pid>-XXXX`` and holds an exclusive lock on a ``.lock`` file inside it
for as long as the process lives; while it is in use, ``tempfile`` puts every other temporary file (ONNX
Runtime's ``ort.quant.*``, converters' scratch) inside it too. ``sweep_stale()``, run when a command starts,
removes the ``edgepack-<pid>-*`` folders whose process is gone: the pid is not alive here, and the lock (held
across pid namespaces on the same kernel) is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_NAME = re.compile(r"^edgepack-(\d+)-")
_held: dict[str, int] = {}  # workdir -> fd of its lock, for the life of the folder


def workdir(tag: str = "") -> Path:
    """A new ``edgepack-<pid>-<tag>XXXX`` folder in TMPDIR, locked by this process."""
    path = Path(tempfile.mkdtemp(prefix=f"edgepack-{os.getpid()}-{tag}"))
    try:
        fd = os.open(path / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _held[str(path)] = fd
    except OSError:
        pass  # a file system without locks: the pid in the name still protects the folder
    return path


def remove(path: Path) -> None:
    """Delete a work folder made by ``workdir()`` and release its lock."""
    fd = _held.pop(str(path), None)
    shutil.rmtree(path, ignore_errors=True)
    if fd is not None:
        os.close(fd)


#: settings that libraries derive from the temporary folder once and keep in the environment: torch's inductor
#: puts its cache in TMPDIR/torchinductor_<user>, records that path here and creates it again whenever asked, so
#: a path inside a removed work folder would bring the folder back (an empty edgepack-<pid>-*/tmp/torchinductor_root
#: was left after every test run)
_TEMP_DERIVED_ENV = ("TORCHINDUCTOR_CACHE_DIR",)


@contextlib.contextmanager
def scratch(tag: str = "") -> Iterator[Path]:
    """A work folder that also holds every temporary file made meanwhile; removed on the way out, whatever
    happens (errors, Ctrl-C, SIGTERM, SIGHUP)."""
    path = workdir(tag)
    inner = path / "tmp"
    inner.mkdir()
    previous = tempfile.tempdir
    env = {name: os.environ.get(name) for name in _TEMP_DERIVED_ENV}
    tempfile.tempdir = str(inner)
    try:
        yield path
    finally:
        tempfile.tempdir = previous
        for name, value in env.items():   # a setting pointing into the folder must not outlive it
            if os.environ.get(name, "").startswith(str(path)):
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        remove(path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _locked(folder: Path) -> bool:
    """True when another process holds the folder's lock (so it is in use, whatever its pid says)."""
    lock = folder / ".lock"
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def sweep_stale(root: str | Path | None = None) -> list[Path]:
    """Remove ``edgepack-<pid>-*`` folders (ours by uid) of processes that are gone; return what was removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        m = _NAME.match(entry.name)
        try:
            ours = entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid()
        except OSError:
            continue
        if not m or not ours:
            continue
        path = Path(entry.path)
        if _alive(int(m.group(1))) or _locked(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
