"""How every ``mcard`` command fails: one error table, applied once.

A failure is one line on stderr, always with the prefix :data:`PREFIX`, and the
exit code of the error (``mcard.core.errors``: 1 the check failed, 2 unusable input or
bad usage, 3 no GPU, 130 interrupted). With ``--json`` the same failure is also
one JSON object on stdout, ``{"ok": false, "error": ..., "exit_code": ...}``, so a
script reading stdout always gets JSON. Never a traceback: an exception that is
not one of mcard's own is reported as an internal error (a bug; ``MCARD_DEBUG=1``
shows the traceback).

Commands wrap their work in :func:`command_errors`; :func:`run_app` does the same
for what the argument parser rejects before a command runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar, cast

import typer

from ..core.errors import EXIT_FAILED, EXIT_UNUSABLE, McardError

T = TypeVar("T")
PREFIX = "mcard: "
EXIT_INTERRUPTED = 130
INTERNAL_ERROR_EXIT = EXIT_UNUSABLE  # an unexpected error (a bug in mcard), in every command


def failure_of(exc: BaseException, interrupted: str = "interrupted") -> tuple[str, int]:
    """The error table: an exception -> (the one line to print, the exit code).

    ================================  =====================================  =========
    exception                         message                                exit code
    ================================  =====================================  =========
    :class:`McardError` (and kinds)   its message, naming the file           its ``exit_code`` (1, 2, 3)
    the argument parser's errors      its message and where to get help      the parser's (2)
    ``KeyboardInterrupt``             ``interrupted`` (and what is kept)     130
    ``OSError``                       the file and the system's words        1
    anything else                     ``internal error: ...`` (a bug)        2 (:data:`INTERNAL_ERROR_EXIT`)
    ================================  =====================================  =========
    """
    if isinstance(exc, McardError):
        return str(exc), exc.exit_code
    if isinstance(exc, _click_exceptions()):
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = cast(Any, exc).format_message()  # a ClickException (typer's vendored one or click's)
        return f"{message}{where}", int(getattr(exc, "exit_code", EXIT_UNUSABLE))
    if isinstance(exc, KeyboardInterrupt):
        return interrupted, EXIT_INTERRUPTED
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return f"{where}{exc.strerror or exc}", EXIT_FAILED
    return internal_error_text(exc), INTERNAL_ERROR_EXIT


def error_object(message: str, exit_code: int) -> dict[str, object]:
    """The ``--json`` form of a failure."""
    return {"ok": False, "error": message, "exit_code": exit_code}


def report_error(message: str, exit_code: int, json_out: bool) -> None:
    """Print a failure: the JSON object on stdout (with ``--json``) and one line on stderr."""
    if json_out:
        sys.stdout.write(json.dumps(error_object(message, exit_code)) + "\n")
        sys.stdout.flush()
    typer.echo(PREFIX + " ".join(message.split("\n")), err=True)


def fail(message: str, exit_code: int, json_out: bool = False) -> NoReturn:
    """Report a failure and leave the command with ``exit_code``."""
    report_error(message, exit_code, json_out)
    raise typer.Exit(exit_code)


def internal_error_text(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {exc} (a bug in mcard; set MCARD_DEBUG=1 for the traceback)"


@contextlib.contextmanager
def command_errors(json_out: bool = False,
                   interrupted: str = "interrupted") -> Iterator[None]:
    """Turn whatever the wrapped call raises into a reported failure and its exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except (Exception, KeyboardInterrupt) as exc:
        if _debug(exc):
            raise
        fail(*failure_of(exc, interrupted), json_out)


def guarded(json_out: bool, call: Callable[[], T], interrupted: str = "interrupted") -> T:
    """``call()`` inside :func:`command_errors`: its result, or its failure reported and exited."""
    with command_errors(json_out, interrupted=interrupted):
        return call()
    raise AssertionError("unreachable: command_errors exits on every failure")  # pragma: no cover


@functools.cache
def _click_exceptions() -> tuple[type[BaseException], ...]:
    """The argument parser's exception base class (typer vendors click in recent releases)."""
    found: list[type[BaseException]] = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        with contextlib.suppress(ImportError):
            module = __import__(name, fromlist=["ClickException"])
            found.append(module.ClickException)
    return tuple(found)


def run_app(app: typer.Typer, args: Sequence[str] | None = None) -> int:
    """Run the CLI; a usage error the parser finds is reported like every other failure."""
    args = list(sys.argv[1:] if args is None else args)
    json_out = "--json" in args
    try:
        code = app(args=args, prog_name="mcard", standalone_mode=False)
    except (Exception, KeyboardInterrupt) as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed: nothing to add
            return EXIT_UNUSABLE
        if _debug(exc):
            raise
        message, code = failure_of(exc)
        report_error(message, code, json_out)
        return code
    return int(code or 0)


def _debug(exc: BaseException) -> bool:
    """``MCARD_DEBUG=1`` shows the traceback of an unexpected error (a bug) instead of its one line."""
    return bool(os.environ.get("MCARD_DEBUG")) and not isinstance(
        exc, (McardError, KeyboardInterrupt, OSError, *_click_exceptions()))
