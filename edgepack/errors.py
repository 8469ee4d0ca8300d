"""One error base for everything a person can act on: a message, a hint and an exit code.

Exit codes (documented in the README and `edgepack --help`):

    0   built, every budget met
    1   built, but at least one budget missed (the bundle is written and marked failed)
    2   usage or input error (bad option, missing/corrupt file, unknown target, bad data)
    3   output error (output exists without --force, unwritable or full location)
    4   a stage failed on valid input (export, conversion or quantization did not work)
    5   bundle verification failed (files do not match the manifest, golden output differs)
    70  internal error (a bug in edgepack: please report it with --debug output)
    129 hung up (SIGHUP: the terminal or SSH session closed); cleaned up like an interrupt
    130 interrupted (SIGINT/SIGTERM); nothing is left under the output name
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_OK = 0
EXIT_BUDGET = 1
EXIT_USAGE = 2
EXIT_OUTPUT = 3
EXIT_STAGE = 4
EXIT_VERIFY = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class EdgepackError(Exception):
    """An error with a message for people, an optional hint, and the process exit code."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(EdgepackError):
    """The model, data, target or config the user gave cannot be used."""

    exit_code = EXIT_USAGE


class ConfigError(InputError):
    """A profile or config file (or option) is invalid."""


class OutputError(EdgepackError):
    """The output location cannot be written."""

    exit_code = EXIT_OUTPUT


class StageError(EdgepackError):
    """A pipeline stage (export, convert, quantize) failed on input that looked valid."""

    exit_code = EXIT_STAGE


class VerifyError(EdgepackError):
    """A bundle does not match its manifest or its golden output."""

    exit_code = EXIT_VERIFY


class TimeLimitReached(Exception):
    """Internal: a step given a deadline (a trial of the accuracy search) stopped at it. Not for users: the
    search catches it and reports the trial as stopped."""


class Interrupted(EdgepackError):
    """The build was interrupted by a signal."""

    exit_code = EXIT_INTERRUPTED


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """Return "did you mean 'x'?" for the closest choice, or None when nothing is close."""
    match = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None
