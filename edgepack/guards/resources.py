"""Running out of something (memory, disk, file size, a closed output) is the machine's state, not a bug.

``translate`` turns such an exception into an EdgepackError with a hint: out of memory -> StageError (exit 4);
disk full, quota, file-size limit, read-only file system, closed pipe -> OutputError (exit 3). Anything else
gives None and stays what it was.
"""

from __future__ import annotations

import errno
import re
import tempfile

from edgepack.errors import EdgepackError, OutputError, StageError

_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
_NO_MEMORY = ("cannot allocate memory", "failed to map segment", "out of memory", "std::bad_alloc")


def _where(exc: OSError) -> str:
    return f" ({exc.filename})" if getattr(exc, "filename", None) else ""


def translate(exc: BaseException) -> EdgepackError | None:
    """The EdgepackError that says what ran out, or None when ``exc`` is not about resources."""
    if isinstance(exc, MemoryError) or getattr(exc, "errno", None) == errno.ENOMEM or (
            isinstance(exc, ImportError | OSError | RuntimeError) and any(s in str(exc).lower() for s in _NO_MEMORY)):
        return StageError("out of memory", hint="free memory or raise the limit (ulimit -v); fewer --calib-samples "
                                                "and --val-samples need less")
    if not isinstance(exc, OSError):
        return None
    code = exc.errno
    if code is None and _SHORT_WRITE.search(str(exc)):  # numpy's tofile/save on a full disk or at the size limit
        return OutputError("no space left for a temporary file: it could not be written in full (disk full, or the "
                           "file-size limit)",
                           hint=f"free space in {tempfile.gettempdir()}, set TMPDIR to a larger disk, or raise "
                                "the file-size limit (ulimit -f)")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"no space left on the device{_where(exc)}",
                           hint=f"free space in {tempfile.gettempdir()} (temporary files) and in the output folder, "
                                "or set TMPDIR to a folder on a larger disk")
    if code == errno.EFBIG:
        return OutputError(f"a file grew beyond the file-size limit{_where(exc)}",
                           hint="raise the limit (ulimit -f) or write to another file system")
    if code == errno.EROFS:
        return OutputError(f"read-only file system{_where(exc)}", hint="choose a writable --out and TMPDIR")
    if code == errno.EPIPE:
        return OutputError("the output was closed before everything was written (broken pipe)",
                           hint="read the whole output, or pass --quiet / --json and redirect it to a file")
    return None


def reraise(exc: BaseException) -> None:
    """Raise the translation of ``exc`` when it is about resources (used inside broad except blocks)."""
    translated = translate(exc)
    if translated is not None:
        raise translated from exc
