"""Reading what users and strangers hand mcard: local files, YAML front matter, regexes from configs.

* :func:`read_capped` reads a **regular file** only (a FIFO, ``/dev/zero``,
  a folder or a socket is refused before a byte is read; opening does not
  block on a FIFO), and at most ``cap`` bytes: a file that grows past the cap
  while being read is refused too.
* :func:`load_yaml` parses YAML with PyYAML's safe loader, refusing aliases
  (``*name``: the billion-laughs expansion), more than ``max_nodes`` nodes and
  nesting deeper than ``max_depth``.
* :func:`fullmatch` / :func:`match` / :func:`search` / :func:`compile_pattern`
  run patterns that come from files (PEFT ``target_modules``,
  ``exclude_modules``, ``rank_pattern``/``alpha_pattern`` keys, transformers'
  ``llm_int8_skip_modules``) on the ``regex`` engine
  with a time limit, so a pattern like ``(.+)+X`` becomes a finding instead of
  a hang.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from .errors import UnusableInput

MAX_TEXT_BYTES = 16 * 1024 * 1024  # a registry entry, a card, an evaluation JSON
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64
MAX_PATTERN_CHARS = 1000
REGEX_SECONDS = 0.25  # one pattern against one name


def read_capped(path: str | Path, cap: int) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes; :class:`UnusableInput` otherwise."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UnusableInput(f"cannot read: {exc.strerror or exc}", path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) \
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a regular file"
            raise UnusableInput(f"is {kind}; only regular files are read", path)
        if info.st_size > cap:
            raise UnusableInput(f"{info.st_size} bytes is more than the {cap} allowed for this file", path)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise UnusableInput(f"grew past the {cap} bytes allowed while being read", path)
        return b"".join(chunks)
    except OSError as exc:
        raise UnusableInput(f"cannot read: {exc.strerror or exc}", path) from None
    finally:
        os.close(fd)


def read_text(path: str | Path, cap: int = MAX_TEXT_BYTES) -> str:
    """:func:`read_capped`, decoded as UTF-8 (a one-line error naming the byte otherwise)."""
    data = read_capped(path, cap)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnusableInput(f"not UTF-8 text (byte {exc.start})", path) from None


# -- YAML ----------------------------------------------------------------------------------------
def load_yaml(text: str, where: str | Path, max_nodes: int = MAX_YAML_NODES, max_depth: int = MAX_YAML_DEPTH) -> Any:
    """``yaml.safe_load(text)`` without aliases, with at most ``max_nodes`` nodes ``max_depth`` deep.

    Raises :class:`UnusableInput` for a document over the limits and ``yaml.YAMLError`` for bad YAML.
    """
    import yaml

    class _Bounded(yaml.SafeLoader):
        nodes = 0
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise UnusableInput("YAML aliases (*name) are not accepted in card metadata", where)
            _Bounded.nodes += 1
            if _Bounded.nodes > max_nodes:
                raise UnusableInput(f"more than {max_nodes} YAML nodes; refused", where)
            _Bounded.depth += 1
            try:
                if _Bounded.depth > max_depth:
                    raise UnusableInput(f"YAML nested deeper than {max_depth} levels; refused", where)
                return super().compose_node(parent, index)
            finally:
                _Bounded.depth -= 1

    return yaml.load(text, Loader=_Bounded)


# -- regular expressions from files ------------------------------------------------------------
class PatternError(UnusableInput):
    """A pattern from a file that cannot be used: invalid, too long, or too slow to match."""


def compile_pattern(pattern: str) -> Any:
    """Compile a pattern from a file on the ``regex`` engine (Python ``re`` syntax); :class:`PatternError` if not."""
    import regex

    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"pattern of {len(pattern)} characters (limit {MAX_PATTERN_CHARS})")
    try:
        return regex.compile(pattern, flags=regex.VERSION0)
    except (regex.error, RecursionError, OverflowError, ValueError) as exc:
        raise PatternError(f"not a valid regular expression: {exc}") from None


def fullmatch(pattern: str, text: str, seconds: float = REGEX_SECONDS) -> bool:
    """``re.fullmatch(pattern, text)`` with a time limit; :class:`PatternError` when it is over."""
    return _timed("fullmatch", pattern, text, seconds)


def search(pattern: str, text: str, seconds: float = REGEX_SECONDS) -> bool:
    """``re.search`` with the same limits as :func:`fullmatch`."""
    return _timed("search", pattern, text, seconds)


def match(pattern: str, text: str, seconds: float = REGEX_SECONDS) -> bool:
    """``re.match`` (anchored at the start only) with the same limits as :func:`fullmatch`."""
    return _timed("match", pattern, text, seconds)


def _timed(how: str, pattern: str, text: str, seconds: float) -> bool:
    try:
        return getattr(compile_pattern(pattern), how)(text, timeout=seconds) is not None
    except TimeoutError:
        raise PatternError(f"pattern {pattern[:60]!r} takes more than {seconds:g} s to match {text[:60]!r} "
                           "(catastrophic backtracking)") from None
