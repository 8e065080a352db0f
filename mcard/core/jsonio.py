"""Reading JSON and TOML with one-line errors that name the file and the place."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from .errors import UnusableInput
from .untrusted import read_capped, read_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)")

# Configs are small; anything bigger than this is not a config.
MAX_CONFIG_BYTES = 64 * 1024 * 1024
MAX_TOML_BYTES = 4 * 1024 * 1024  # a registry entry


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` ``object_pairs_hook``: a dict, or ValueError on a key that appears twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json_bytes(data: bytes, path: str | Path) -> Any:
    """Parse JSON, raising :class:`UnusableInput` with line and column on error."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnusableInput(f"not UTF-8 text (byte {exc.start})", path) from None
    try:
        return json.loads(text, object_pairs_hook=reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise UnusableInput(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", path) from None
    except ValueError as exc:
        raise UnusableInput(f"malformed JSON: {exc}", path) from None
    except RecursionError:
        raise UnusableInput("malformed JSON: nested too deeply", path) from None


def load_json(path: str | Path, cap: int = MAX_CONFIG_BYTES) -> Any:
    """Parse a JSON file: a regular file of at most ``cap`` bytes (:func:`mcard.core.untrusted.read_capped`)."""
    path = Path(path)
    return parse_json_bytes(read_capped(path, cap), path)


def load_json_object(path: str | Path, cap: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    value = load_json(path, cap)
    if not isinstance(value, dict):
        raise UnusableInput(f"expected a JSON object, found {type(value).__name__}", path)
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Load TOML; a syntax error is reported as ``file:line:column: message``."""
    path = Path(path)
    text = read_text(path, MAX_TOML_BYTES)
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise UnusableInput("TOML nested too deeply", path) from None
    except tomllib.TOMLDecodeError as exc:
        line, col, msg = getattr(exc, "lineno", None), getattr(exc, "colno", None), str(exc)
        found = _TOML_AT.search(msg)
        if found:  # Python < 3.14 puts the position only in the message
            line, col = int(found.group(1)), int(found.group(2))
            msg = _TOML_AT.sub("", msg).strip()
        if line is not None:
            raise UnusableInput(f"TOML syntax error: {msg}", f"{path}:{line}:{col}") from None
        raise UnusableInput(f"TOML syntax error: {msg}", path) from None
