"""Run native code that can abort the process (TFLite converter, LiteRT, onnxruntime) in a child process.

The TFLite converter and LiteRT abort() the whole process on some models (LiteRT on full-integer BERTs; on a
ResNet whose MaxPool padding gave the stem a 1e36 scale, see backends/tflite_prep.pad_maxpools). An abort
kills Python with no exception, no message of ours and no cleanup: the build's temp folder stays behind.
Everything that runs such code goes through here instead:

- `call(fn, *args, step=..., key=...)` runs ``fn(*args, **kwargs)`` in a fresh Python (a module-level,
  picklable function; arguments and result are pickled through files) and returns its result. An
  EdgepackError (or any exception) raised in the child is raised again in the parent; the child's log
  records are replayed into the parent's loggers.
- `run_child(cmd, step=...)` is the same machinery for a ready-made command (``python -m edgepack.device.measure``).

A child killed by a signal becomes a StageError (exit code 4) that names the step, the last sub-step the
child marked (`mark`), the model's op when the child's stderr or the caller's ``diagnose`` names one, and
the tail of the child's stderr. The child gets its own TMPDIR, removed afterwards (TensorFlow's autograph
writes files there that only a clean exit removes). Ctrl-C or SIGTERM in the parent kills the child; the
child also dies with its parent (PR_SET_PDEATHSIG).

Test hook: EDGEPACK_TEST_ABORT=<key> makes the child of that key call os.abort() before its work (keys:
"tflite-convert", "tflite-text-int8", and measure's modes "outputs", "latency", "memory"), and
EDGEPACK_TEST_ABORT=<text> makes a child abort at the first sub-step `mark`ed with text starting so
("TFLite converter: calibrate" aborts where the INT8 calibration starts).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError, StageError

log = logging.getLogger(__name__)

CHILD_ENV = "EDGEPACK_ISOLATED"
TEST_ABORT_ENV = "EDGEPACK_TEST_ABORT"
MARK = "[edgepack step] "
TAIL_LINES = 4
#: stderr lines that TensorFlow and absl print on every start: never the reason for a crash
_NOISE = re.compile(r"^[IW]\d{4} |cuda_(dnn|blas|fft)|Unable to register|computation placer|absl::InitializeLog"
                    r"|oneDNN custom operations|TF_ENABLE_ONEDNN_OPTS|rebuild TensorFlow|^\s*$")
#: where native messages name the op they failed on
_OP_PATTERNS = (re.compile(r"Node number \d+ \((\w+)\)"),             # LiteRT: "Node number 37 (CONV_2D) failed"
                re.compile(r"loc\((?:fused\[)?\"([^\"]+)\""),         # MLIR converter locations
                re.compile(r"kernels/(\w+)\.cc:\d+"))                  # a TFLite kernel's source file
DEFAULT_HINT = ("native code crashed on this model; run with --debug for the child's full stderr, and please "
                "report it with the model if you can share it")


def in_child() -> bool:
    return os.environ.get(CHILD_ENV) == "1"


def mark(substep: str) -> None:
    """Note on stderr what the child is about to do, so a crash can say where it happened (no-op in the parent)."""
    if in_child():
        sys.stderr.write(f"\n{MARK}{substep}\n")
        sys.stderr.flush()
        wanted = os.environ.get(TEST_ABORT_ENV)
        if wanted and substep.startswith(wanted):  # the test hook, at a named sub-step
            os.abort()
    else:
        log.debug("%s", substep)


def test_abort(key: str) -> None:
    """The test hook: abort() like a native crash when EDGEPACK_TEST_ABORT names this child's key."""
    if in_child() and os.environ.get(TEST_ABORT_ENV) == key:
        sys.stderr.write(f"\n{MARK}aborting on purpose ({TEST_ABORT_ENV}={key})\n")
        sys.stderr.flush()
        os.abort()


def call(fn: Callable[..., Any], *args: Any, step: str, key: str, hint: str | None = None,
         diagnose: Callable[[], str | None] | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` run in a child Python; its return value.

    ``step`` says what runs, for people ("TFLite full-integer INT8 conversion"); ``key`` names it for the
    test hook. ``diagnose`` (run in the parent after a crash) may return a sentence naming the op at fault.
    """
    tmp = Path(tempfile.mkdtemp(prefix="edgepack-call-"))
    try:
        payload, result = tmp / "call.pkl", tmp / "result.pkl"
        with open(payload, "wb") as fh:
            pickle.dump({"fn": fn, "args": args, "kwargs": kwargs, "key": key,
                         "level": logging.getLogger().getEffectiveLevel()}, fh, protocol=pickle.HIGHEST_PROTOCOL)
        run_child([sys.executable, "-m", "edgepack.isolate", str(payload), str(result)], step=step, hint=hint,
                  diagnose=diagnose)
        with open(result, "rb") as fh:
            status, value, records = pickle.load(fh)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for record in records:
        logging.getLogger(record.name).handle(record)
    if status == "error":
        raise value
    return value


def run_child(cmd: list[str], *, step: str, hint: str | None = None,
              diagnose: Callable[[], str | None] | None = None) -> str:
    """Run ``cmd`` (a Python child) with its own TMPDIR; return its stdout. A signal death becomes a StageError
    (see the module docstring); a non-zero exit, a StageError quoting the child's last stderr line."""
    tmp = Path(tempfile.mkdtemp(prefix="edgepack-child-"))
    try:
        here = str(Path(__file__).resolve().parents[1])  # the child imports this very edgepack
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, CHILD_ENV: "1", "TMPDIR": str(tmp / "tmp"), "PYTHONPATH": path}
        (tmp / "tmp").mkdir()
        with open(tmp / "stdout", "wb") as out, open(tmp / "stderr", "wb") as err:
            code = _wait(subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env))
        stderr = (tmp / "stderr").read_text(errors="replace")
        if code != 0:
            log.debug("%s: child exited with %d; its stderr:\n%s", step, code, stderr)
            raise crash_error(step, code, stderr, hint, diagnose) if code < 0 else StageError(
                f"{step} failed: {_last_line(stderr)}", hint=hint)
        return (tmp / "stdout").read_text(errors="replace")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wait(proc: subprocess.Popen) -> int:
    """The child's exit code (negative: killed by that signal); the child is killed if we are interrupted."""
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:  # KeyboardInterrupt / SIGTERM in the parent: take the child down too
            proc.kill()
            proc.wait()


def crash_error(step: str, code: int, stderr: str, hint: str | None,
                diagnose: Callable[[], str | None] | None = None) -> StageError:
    """The StageError for a child killed by signal ``-code``: step, sub-step, op at fault, stderr tail."""
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    lines = [line for line in stderr.splitlines() if not _NOISE.search(line)]
    marks = [line[len(MARK):] for line in lines if line.startswith(MARK)]
    tail = [line.strip() for line in lines if not line.startswith(MARK)][-TAIL_LINES:]
    message = f"{step} crashed ({name})" + (f" at step '{marks[-1]}'" if marks else "")
    op = _op_from(stderr)
    found = _safe(diagnose)
    if found:
        message += f"; {found}"
    elif op:
        message += f"; the crash names op {op}"
    if tail:
        message += "; last output: " + " | ".join(t[:200] for t in tail)
    return StageError(message, hint=hint or DEFAULT_HINT)


def _op_from(stderr: str) -> str | None:
    """The last op a native message names (LiteRT node, MLIR location, TFLite kernel), or None."""
    for pattern in _OP_PATTERNS:
        found = pattern.findall(stderr)
        if found:
            return found[-1]
    return None


def _safe(diagnose: Callable[[], str | None] | None) -> str | None:
    """A post-mortem diagnosis must never hide the crash it explains."""
    if diagnose is None:
        return None
    try:
        return diagnose()
    except Exception as exc:  # noqa: BLE001 - any failure here only loses detail
        log.debug("crash diagnosis failed: %s", exc)
        return None


def _last_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not _NOISE.search(line) and not line.startswith(MARK)]
    return (lines or ["?"])[-1][:300]


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a killed build leaves no converter running)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


class _Collect(logging.Handler):
    """Keeps the child's log records (made picklable) to replay them in the parent."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args, record.exc_info, record.exc_text = record.getMessage(), None, None, None
        self.records.append(record)


def _child_main(payload: Path, result: Path) -> None:
    """Entry point of `call`'s child: run the pickled call, pickle (status, value, log records)."""
    die_with_parent()
    with open(payload, "rb") as fh:
        job = pickle.load(fh)
    test_abort(job["key"])
    collect = _Collect()
    root = logging.getLogger()
    root.setLevel(job["level"])
    root.addHandler(collect)
    try:
        out = ("ok", job["fn"](*job["args"], **job["kwargs"]))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        out = ("error", _picklable(exc))
    with open(result, "wb") as fh:
        pickle.dump((*out, collect.records), fh, protocol=pickle.HIGHEST_PROTOCOL)


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling (with the child's traceback as a note), else a StageError."""
    if not isinstance(exc, EdgepackError):
        exc.add_note("in the child process:\n" + "".join(traceback.format_exception(exc)).rstrip())
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - unpicklable exception types
        return StageError(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]), Path(sys.argv[2]))
