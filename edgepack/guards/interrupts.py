"""Signals that end a command: SIGINT (Ctrl-C), SIGTERM and SIGHUP (an SSH session or terminal closing) all
unwind like Ctrl-C, so every cleanup runs (temporary folders, partial bundles) and one message is printed.
SIGHUP exits 129 (128 + 1), the others 130."""

from __future__ import annotations

import signal
from typing import Any

from edgepack.errors import Interrupted

EXIT_HANGUP = 129


class HangUp(KeyboardInterrupt):
    """Raised by the SIGHUP handler."""


class HungUp(Interrupted):
    exit_code = EXIT_HANGUP


def install() -> None:
    """SIGTERM behaves like Ctrl-C, SIGHUP too (as HangUp); only possible in the main thread."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def hang_up(signum: int, frame: Any) -> None:
        raise HangUp

    try:
        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGHUP, hang_up)
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        pass


def error_for(exc: KeyboardInterrupt) -> Interrupted:
    if isinstance(exc, HangUp):
        return HungUp("hung up (SIGHUP: the terminal or SSH session closed); nothing was left under the output name",
                      hint="run long builds under nohup, tmux or screen")
    return Interrupted("interrupted; nothing was left under the output name")
