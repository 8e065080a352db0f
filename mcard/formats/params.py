"""The parameters a format takes (for ``mcard size`` and registry entries), checked once.

Each format module declares ``PARAMS``: name -> :class:`Param`, built from its own
constants (``gptq.VALID_BITS``, ``awq.VERSIONS``, ``kquant.FTYPES``...), so the
valid values are stated in one place. :func:`check` is what ``mcard size`` and the
registry loader both call; a :class:`BadParam` names the parameter and says what
would be valid, and each caller words where it came from (``--bits``,
``variants[2].bits``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..core.errors import UnusableInput

KINDS = {"int": "an integer", "bool": "true or false", "str": "a string", "list": "a list of strings",
         "number": "a number"}


@dataclass(frozen=True)
class Param:
    """One parameter: its kind, what values the format can represent, and whether it changes the size."""

    kind: str  # a key of KINDS
    expected: str = ""  # the valid values in words: "2, 3, 4 or 8"; empty when any value of the kind is
    valid: Callable[[Any], bool] = lambda value: True
    normalize: Callable[[Any], Any] | None = None  # may raise ValueError/UnusableInput with the whole explanation
    choices: tuple[Any, ...] = ()  # for did-you-mean hints
    required: bool = False  # a size cannot be predicted without it
    sizes: bool = True  # False: a registry key the format takes that does not change the file size


class BadParam(UnusableInput):
    """``key`` cannot be used (exit 2): ``problem`` says why; ``takes`` lists what the format accepts.

    ``reason`` is ``not-applicable`` (the format has no such parameter), ``invalid`` or ``missing``.
    """

    def __init__(self, key: str, problem: str, takes: Iterable[str] = (), reason: str = "invalid") -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem, self.takes, self.reason = key, problem, list(takes), reason


def choice(values: Iterable[Any], normalize: Callable[[Any], Any] | None = None, **kw: Any) -> Param:
    """A parameter that is one of ``values``."""
    values = tuple(values)
    kind = "bool" if all(isinstance(v, bool) for v in values) else "int" if all(
        isinstance(v, int) for v in values) else "str"
    return Param(kind, _either(values), lambda v: v in values, normalize, values, **kw)


def _either(values: tuple[Any, ...]) -> str:
    text = [str(v) for v in values]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " or " + text[-1]


def group_size(valid: Callable[[Any], bool]) -> Param:
    return Param("int", "-1 (no groups) or a positive integer", valid)


def _is(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def check(fmt: str, spec: dict[str, Param], given: dict[str, Any], for_size: bool = False) -> dict[str, Any]:
    """The given parameters, normalized; :class:`BadParam` for the first one ``fmt`` cannot represent.

    ``for_size``: only parameters that change the size are accepted, and required ones must be given.
    """
    usable = {k: p for k, p in spec.items() if p.sizes or not for_size}
    out: dict[str, Any] = {}
    for key, value in given.items():
        param = usable.get(key)
        if param is None:
            what = "takes no parameters" if not usable else f"takes {', '.join(usable)}"
            raise BadParam(key, f"does not apply to {fmt} ({fmt} {what})", usable, "not-applicable")
        if not _is(param.kind, value):
            raise BadParam(key, f"{fmt} {key} must be {KINDS[param.kind]}, not {value!r}", usable)
        try:
            value = param.normalize(value) if param.normalize is not None else value
        except (ValueError, UnusableInput) as exc:
            raise BadParam(key, exc.message if isinstance(exc, UnusableInput) else str(exc), usable) from None
        if not param.valid(value):
            hint = ""
            if param.choices and isinstance(value, str):
                close = difflib.get_close_matches(value, [str(c) for c in param.choices], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BadParam(key, f"{fmt} {key} must be {param.expected}, not {value!r}{hint}", usable)
        out[key] = value
    if for_size:
        for key, param in usable.items():
            if param.required and key not in out:
                raise BadParam(key, f"{fmt} needs a {key}: {param.expected}", usable, "missing")
    return out
