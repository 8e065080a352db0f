"""One redaction and plain-text step for every string that came from a server, a file or a user.

Every line mcard prints, logs or writes into a report passes :func:`redact`
first: the tokens mcard knows (``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, a
token given to a library call) are replaced by ``***``, as are their
URL-encoded forms and anything shaped like a Hugging Face token
(``hf_`` + 20 or more letters and digits), so a server that echoes the token
in an error message, a reason phrase or a file name cannot get it printed.

:func:`plain` also replaces control characters (terminal escape sequences,
carriage returns) so text from a server cannot rewrite the terminal, and
:func:`markup_safe` escapes rich markup (``[bold]``, ``[/]``) so such text is
shown as written, never interpreted. :func:`echo` and :func:`dumps_json` are
the printers the CLI uses.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{20,}")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MIN_SECRET = 6  # shorter values are not treated as secrets (they would mask ordinary words)


def register_secret(value: str | None) -> None:
    """Remember ``value`` (a token) so that :func:`redact` masks it from now on."""
    if value and len(value) >= MIN_SECRET:
        with _LOCK:
            _SECRETS.add(value)


def _secrets() -> list[str]:
    found = set(_SECRETS)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(var, "").strip()
        if len(value) >= MIN_SECRET:
            found.add(value)
    forms = set()
    for s in found:
        forms.update({s, quote(s, safe=""), quote(s)})
    return sorted(forms, key=len, reverse=True)


def redact(text: Any) -> str:
    """``str(text)`` with every known token, and anything shaped like one, replaced by ``***``.

    Lone surrogates (from a JSON ``"\\ud800"``) are shown as ``\\ud800``: they cannot be written as UTF-8.
    """
    out = text if isinstance(text, str) else str(text)
    out = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
    for secret in _secrets():
        if secret in out:
            out = out.replace(secret, "***")
    return _TOKEN_SHAPE.sub("hf_***", out)


def plain(text: Any) -> str:
    """:func:`redact`, then control characters shown as ``\\xNN`` (newlines and tabs kept)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else "?", redact(text))


def one_line(text: Any, limit: int = 2000) -> str:
    """:func:`plain`, on one line (newlines shown as ``\\n``), cut to ``limit`` characters."""
    out = plain(text).replace("\r", "\\r").replace("\n", "\\n")
    return out if len(out) <= limit else out[:limit] + f"... ({len(out) - limit} more characters)"


def markup_safe(text: Any) -> str:
    """:func:`plain` with rich markup escaped: safe to put inside a string rich will parse for markup."""
    from rich.markup import escape

    return escape(plain(text))


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-able object with every string (keys too) redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact(k) if isinstance(k, str) else k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """JSON text of ``obj`` with every string redacted; values JSON has no type for become strings."""
    return json.dumps(redact_obj(obj), default=str, **kwargs)


def echo(text: Any = "", err: bool = False) -> None:
    """Print one message (plain, redacted) to stdout or stderr."""
    import typer

    typer.echo(plain(text), err=err)


class RedactingWriter:
    """A text stream that redacts what is written to it, then passes it on (everything else delegates)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(redact(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def redact_process_output() -> Callable[[], None]:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in :class:`RedactingWriter`; returns the function that unwraps them.

    The CLI does this before every command, so whatever reaches the terminal,
    a pipe or a CI log (rich tables, JSON, errors, warnings) is redacted even
    where a message was built without :func:`plain`.
    """
    import logging

    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, RedactingWriter):
        sys.stdout = RedactingWriter(sys.stdout)
    if not isinstance(sys.stderr, RedactingWriter):
        sys.stderr = RedactingWriter(sys.stderr)
    # huggingface_hub's warnings (retries, URLs) go through the same step, to the stderr of this command
    handlers = [h for h in logging.getLogger("huggingface_hub").handlers if type(h) is logging.StreamHandler]
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.stream = sys.stderr  # no flush of the old stream: it may be closed (in-process test runs)

    def restore() -> None:
        for handler, stream in zip(handlers, streams, strict=True):
            handler.stream = stream
        sys.stdout, sys.stderr = saved

    return restore
