"""Calling the user's code (a model factory, a module's forward) so that its failures read as its own.

A factory that raises, calls ``sys.exit`` or runs argparse (which parses edgepack's command line, prints a
usage line that looks like ours and exits) becomes one InputError that names the factory, with exit code 2.
``sys.exit(0)`` from model code must never become edgepack's exit 0: CI would read it as a passed build.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from typing import Any

from edgepack.errors import InputError

_TAIL = 300  # characters of the factory's own output quoted in the error


def _exit_text(code: object) -> str:
    return f"sys.exit({code!r})" if code is not None else "sys.exit()"


@contextlib.contextmanager
def no_exit(what: str) -> Iterator[None]:
    """Turn a SystemExit raised by model code during ``what`` into an InputError (the library never exits)."""
    try:
        yield
    except SystemExit as exc:
        raise InputError(f"the model's code called {_exit_text(exc.code)} during {what}; nothing was built",
                         hint="model code must return, not exit the process") from None


def call_factory(spec: str, factory: Callable[[], Any], doing: str = "",
                 passthrough: tuple[type[BaseException], ...] = ()) -> Any:
    """``factory()`` with an empty argument list and its output captured; its failures become InputError.

    ``doing`` says what was being done (" while importing its module"); ``passthrough`` exceptions are
    re-raised as they are (the caller words them)."""
    saved_argv, captured = sys.argv, io.StringIO()
    sys.argv = [spec.split(":", 1)[0]]
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            model = factory()
    except SystemExit as exc:
        raise InputError(f"factory '{spec}'{doing} called {_exit_text(exc.code)} instead of returning a model"
                         + _said(captured), hint="a factory takes no arguments and returns a torch.nn.Module; "
                         "if it parses command-line options, give them defaults") from None
    except passthrough:
        raise
    except Exception as exc:
        if _needs_arguments(factory, exc):
            raise InputError(f"factory '{spec}' needs arguments ({exc}); edgepack calls it with none",
                             hint="give its parameters defaults, or write a factory of no arguments that calls it "
                                  "(def my_model(): return build(num_classes=10))") from None
        raise InputError(f"factory '{spec}'{doing} raised {type(exc).__name__}: {str(exc)[:300]}" + _said(captured),
                         hint="the error is in the factory's code, not in edgepack; --debug shows its "
                              "traceback") from exc
    finally:
        sys.argv = saved_argv
    if captured.getvalue():
        sys.stderr.write(captured.getvalue())  # what it printed, shown as it would have been, on stderr
    return model


def _needs_arguments(factory: Callable[[], Any], exc: Exception) -> bool:
    """Whether calling ``factory()`` failed for want of arguments it requires (not a TypeError inside it)."""
    import inspect

    if not isinstance(exc, TypeError):
        return False
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                                   p.KEYWORD_ONLY) for p in params)


def _said(captured: io.StringIO) -> str:
    text = " ".join(captured.getvalue().split())
    if not text:
        return ""
    return f" (it printed: {text[-_TAIL:]!r})"
