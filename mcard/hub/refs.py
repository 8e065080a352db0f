"""Naming things on the Hub: ``REPO[:BRANCH]`` specs, pasted URLs, and quant parameters in branch names.

* :func:`parse_repo_spec` turns ``org/name``, ``org/name:branch`` or a Hub
  URL (``https://huggingface.co/org/name/tree/<branch>``) into a
  :class:`RepoSpec`, checking the repo id so it is safe as a cache folder name.
* :func:`params_from_branch` reads TheBloke-style branch names
  (``gptq-4bit-32g-actorder_True``, ``gptq-3bit--1g-actorder_True``) and
  exllamav2 ones (``4.65bpw``, ``6.0bpw-h8``) into a :class:`QuantParams`.
* :func:`params_from_configs` reads the same parameters from
  ``quantize_config.json`` and ``config.json``'s ``quantization_config``;
  :func:`compare_params` lists every disagreement instead of hiding it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from ..core.errors import UnusableInput
from ..formats import quant_config

_REPO_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_URL_KINDS = ("tree", "blob", "resolve", "commit")


@dataclass(frozen=True)
class RepoSpec:
    """A model repo and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a well-formed ``[org/]name``; raise UnusableInput otherwise."""
    parts = repo_id.split("/")
    ok = (1 <= len(parts) <= 2 and all(_REPO_PART.match(p) and "--" not in p and ".." not in p for p in parts)
          and not repo_id.endswith(".git"))
    if not ok:
        raise UnusableInput(f"not a Hub repo id (expected org/name): {repo_id!r}")
    return repo_id


# Characters a shell gives meaning to: refused in registry names, so a name is safe wherever CI pastes it.
_SHELL_CHARS = set("\"'`$;&|<>(){}!#\\") | {" ", "\t"}


def validate_ref_name(name: str, where: str = "branch") -> str:
    """A branch or tag name by git's ref-name rules (``git check-ref-format``) and without shell characters.

    Refused: empty or over 255 bytes, control characters, space, ``~ ^ : ? * [ \\``,
    ``..``, ``@{``, ``//``, a leading or trailing ``/`` or ``.``, a component
    starting with ``.`` or ending in ``.lock``, ``@`` alone, and the shell
    characters ``" ' ` $ ; & | < > ( ) { } ! #``.
    """
    bad = next((c for c in name if ord(c) < 32 or ord(c) == 127 or c in "~^:?*[" or c in _SHELL_CHARS), None)
    parts = name.split("/")
    problem = (
        "is empty" if not name
        else "is longer than 255 bytes" if len(name.encode()) > 255
        else f"contains {bad!r}" if bad is not None
        else "contains '..', '@{' or '//'" if ".." in name or "@{" in name or "//" in name
        else "starts or ends with '/' or '.'" if name[0] in "/." or name[-1] in "/."
        else "has a component starting with '.' or ending in '.lock'"
        if any(p.startswith(".") or p.endswith(".lock") for p in parts)
        else "is '@'" if name == "@" else None
    )
    if problem:
        raise UnusableInput(f"{where} name {name[:80]!r} {problem} (git and Hub ref-name rules)")
    return name


def validate_repo_file(path: str, where: str = "file") -> str:
    """A file path in a repo: relative, ``/``-separated, no ``.``/``..`` components, no control or shell characters."""
    from .model import MAX_NAME_BYTES, MAX_PATH_BYTES

    parts = path.split("/")
    bad = next((c for c in path if ord(c) < 32 or ord(c) == 127 or c in _SHELL_CHARS or c in "*?["), None)
    problem = (
        "is empty" if not path
        else f"is longer than {MAX_PATH_BYTES} bytes" if len(path.encode()) > MAX_PATH_BYTES
        else f"contains {bad!r}" if bad is not None
        else "is not a relative path with '/' separators" if path.startswith("/") or re.match(r"^[A-Za-z]:", path)
        else "has an empty, '.' or '..' component" if any(p in ("", ".", "..") for p in parts)
        else f"has a name longer than {MAX_NAME_BYTES} bytes" if any(len(p.encode()) > MAX_NAME_BYTES for p in parts)
        else "is inside .git/" if parts[0] == ".git" else None
    )
    if problem:
        raise UnusableInput(f"{where} {path[:80]!r} {problem} (Hub file-path rules)")
    return path


def validate_revision(revision: str) -> str:
    """Refuse revision names that could escape ``refs/`` in the cache (``..``, absolute, control chars)."""
    parts = revision.split("/")
    if (not revision or revision.startswith("/") or any(p in ("", ".", "..") for p in parts)
            or any(ord(c) < 32 or c in "\\:*?\"<>|" for c in revision)):
        raise UnusableInput(f"not a usable revision name: {revision!r}")
    return revision


def _from_url(text: str) -> RepoSpec:
    url = urlparse(text)
    parts = [unquote(p) for p in url.path.split("/") if p]
    if parts and parts[0] in ("datasets", "spaces"):
        raise UnusableInput(f"only model repos are supported, not {parts[0]}: {text}")
    if parts and parts[0] == "models":
        parts = parts[1:]
    revision = None
    at = 2 if len(parts) >= 3 and parts[2] in _URL_KINDS else 1 if len(parts) >= 2 and parts[1] in _URL_KINDS else 0
    if at:
        if at + 1 >= len(parts):
            raise UnusableInput(f"URL has no revision after /{parts[at]}/: {text}")
        revision = parts[at + 1]
        parts = parts[:at]
    if not 1 <= len(parts) <= 2:
        raise UnusableInput(f"cannot find org/name in URL: {text}")
    return RepoSpec(validate_repo_id("/".join(parts)), validate_revision(revision) if revision else None)


def parse_repo_spec(text: str, revision: str | None = None) -> RepoSpec:
    """Parse ``REPO``, ``REPO:BRANCH`` or a pasted Hub URL; ``revision`` (``--revision``) must not contradict it."""
    text = text.strip()
    if not text:
        raise UnusableInput("no repo given")
    if re.match(r"^https?://", text):
        spec = _from_url(text)
    elif ":" in text:
        repo, _, rev = text.partition(":")
        if not rev:
            raise UnusableInput(f"empty branch after ':' in {text!r}")
        spec = RepoSpec(validate_repo_id(repo), validate_revision(rev))
    else:
        spec = RepoSpec(validate_repo_id(text))
    if revision is not None:
        revision = validate_revision(revision.strip())
        if spec.revision is not None and spec.revision != revision:
            raise UnusableInput(f"{text} names revision {spec.revision!r} but --revision is {revision!r}")
        spec = RepoSpec(spec.repo_id, revision)
    return spec


@dataclass(frozen=True)
class QuantParams:
    """Quantization parameters; None means "not stated"."""

    method: str | None = None
    bits: float | None = None
    group_size: int | None = None
    desc_act: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def is_empty(self) -> bool:
        return self.bits is None and self.method is None

    def describe(self) -> str:
        """Short human form: ``gptq 4bit g32 act-order``."""
        if self.is_empty():
            return "-"
        out = [self.method] if self.method else []
        if self.bits is not None:
            out.append(f"{_num(self.bits)}bit")
        if self.group_size is not None:
            out.append("no-group" if self.group_size == -1 else f"g{self.group_size}")
        if self.desc_act is not None:
            out.append("act-order" if self.desc_act else "no-act-order")
        for key, value in self.extra.items():
            out.append(f"{key}={value}")
        return " ".join(out)

    def as_dict(self) -> dict[str, Any]:
        bits = int(self.bits) if self.bits is not None and float(self.bits).is_integer() else self.bits
        out: dict[str, Any] = {"method": self.method, "bits": bits, "group_size": self.group_size,
                               "desc_act": self.desc_act}
        out.update(self.extra)
        return out


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


_GPTQ_NAME = re.compile(
    r"^(?:(?P<method>gptq|awq|marlin|exl2|hqq|aqlm)[-_])?(?P<bits>\d+)bits?"
    r"(?:[-_](?P<group>-?\d+|none)g?)?(?:[-_]act-?order[-_]?(?P<act>true|false))?$", re.I)
_EXL2_NAME = re.compile(r"^(?P<bits>\d+(?:\.\d+)?)bpw(?:[-_]h(?P<head>\d+))?$", re.I)


def params_from_branch(name: str) -> QuantParams:
    """Quant parameters stated by a branch (or tag) name; empty for ``main`` and unknown styles."""
    m = _GPTQ_NAME.match(name)
    if m:
        group = m.group("group")
        act = m.group("act")
        return QuantParams(
            method=m.group("method").lower() if m.group("method") else None,
            bits=float(m.group("bits")),
            group_size=None if group is None else (-1 if group.lower() == "none" else int(group)),
            desc_act=None if act is None else act.lower() == "true",
        )
    m = _EXL2_NAME.match(name)
    if m:
        extra = {"head_bits": int(m.group("head"))} if m.group("head") else {}
        return QuantParams(method="exl2", bits=float(m.group("bits")), extra=extra)
    return QuantParams()


def _as_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _as_number(value: Any) -> float | None:
    """A finite number, or None (``1e999``, ``NaN`` and ``Infinity`` in a config state nothing usable)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return number if math.isfinite(number) and abs(number) < 2**53 else None


def unusable_numbers(data: Any) -> list[str]:
    """Quant keys of a config mapping whose value is a number that is not finite (reported, then ignored)."""
    if not isinstance(data, dict):
        return []
    return [key for key in ("bits", "group_size", "head_bits", *quant_config.ALIASES)
            if isinstance(data.get(key), (int, float)) and not isinstance(data.get(key), bool)
            and _as_number(data[key]) is None]


def _params_from_mapping(name: str, data: dict[str, Any]) -> QuantParams:
    """GPTQ (bits/group_size/desc_act), AWQ and EXL2 (bits/head_bits) parameters of one source's mapping,
    spellings already normalized (:func:`mcard.formats.quant_config.sources`)."""
    bits = _as_number(data.get("bits"))
    group = _as_number(data.get("group_size"))
    method = data.get("quant_method") or data.get("checkpoint_format") or quant_config.IMPLIED_METHOD.get(name)
    extra = {}
    if _as_number(data.get("head_bits")) is not None:
        extra["head_bits"] = int(data["head_bits"])
    return QuantParams(
        method=str(method).lower() if method else None,
        bits=bits,
        group_size=None if group is None else int(group),
        desc_act=_as_bool(data.get("desc_act")),
        extra=extra,
    )


def params_from_configs(quantize_config: dict[str, Any] | None,
                        config: dict[str, Any] | None) -> dict[str, QuantParams]:
    """Parameters per source file: ``quantize_config.json`` and/or ``config.json`` (its quantization_config)."""
    docs = {"quantize_config.json": quantize_config, "config.json": config}
    out: dict[str, QuantParams] = {}
    for name, mapping in quant_config.sources(docs.get, tuple(docs)).items():
        params = _params_from_mapping(name, mapping)
        if not params.is_empty():
            out[name] = params
    return out


@dataclass(frozen=True)
class Disagreement:
    """One parameter where two sources differ."""

    key: str
    left: Any
    right: Any
    left_source: str
    right_source: str

    def __str__(self) -> str:
        return f"{self.key}: {self.left_source} says {_show(self.left)}, {self.right_source} says {_show(self.right)}"


def _show(value: Any) -> str:
    return _num(value) if isinstance(value, float) else str(value)


def compare_params(left: QuantParams, right: QuantParams, left_source: str, right_source: str) -> list[Disagreement]:
    """Keys stated by both sides with different values (a side that does not state a key cannot disagree)."""
    out = []
    for key in ("method", "bits", "group_size", "desc_act"):
        a, b = getattr(left, key), getattr(right, key)
        if key == "method" and a is not None and b is not None and quant_config.same_method(a, b):
            continue  # e.g. Marlin is a GPTQ checkpoint format
        if a is not None and b is not None and a != b:
            out.append(Disagreement(key, a, b, left_source, right_source))
    for key, a in left.extra.items():
        b = right.extra.get(key)
        if b is not None and a != b:
            out.append(Disagreement(key, a, b, left_source, right_source))
    return out
