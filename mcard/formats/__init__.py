"""The formats mcard reads and writes: one folder and one :class:`~.spec.FormatSpec` per format.

Each format's folder ``mcard/formats/<folder>/`` holds all of that format's layout knowledge
(detection, config, checks, sizes, dequantization, builders, smoke layers) and its ``spec.py``,
the one object everything outside ``formats/`` asks (see :mod:`.spec` for the vocabulary:
format, alias, family). This module is the registry: :data:`SPEC_MODULES` lists the specs
once, in detection order, and the functions below look them up.

A format package's module-level API, used by its spec, the tests and the demo:

``NAME``
    The format's name as reported by ``validate``.
``detect(variant) -> bool`` / ``check(variant, report) -> None``
    Whether a :class:`~mcard.core.variant.Variant` is in this format; fill the report.
``PARAMS``
    The parameters a registry entry and ``mcard size`` may set (:class:`~.params.Param`).
``predict_size(shape, **params) -> SizeEstimate`` / ``dequantize(variant, name)``
    Where the format has them.
``write_variant(...)``
    The builders that write format-exact files (tests, smoke, the demo).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from ..core.errors import UnusableInput
from ..core.variant import Variant
from .params import BadParam
from .spec import CardSpec, FormatSpec

# Every format's folder, once, in the order help texts and messages list them.
SPEC_MODULES = ("gptq", "awq", "gguf", "ggml", "bnb", "hf", "lora", "pickled")
# Detection order: the first whose detect() says yes owns a variant (GGUF/GGML files first,
# adapters before the safetensors quant formats, plain float and pickles last).
DETECT_ORDER = ("gguf", "ggml", "lora", "gptq", "awq", "bnb", "hf", "pickle")


@functools.cache
def specs() -> tuple[FormatSpec, ...]:
    """Every format's spec, in :data:`SPEC_MODULES` order."""
    return tuple(importlib.import_module(f"{__name__}.{folder}.spec").SPEC for folder in SPEC_MODULES)


@functools.cache
def detection_order() -> tuple[FormatSpec, ...]:
    """The specs in :data:`DETECT_ORDER`."""
    return tuple(spec(name) for name in DETECT_ORDER)


def spec(name: str) -> FormatSpec:
    """The spec of format ``name`` (validate's name: ``gptq``, ``bnb``, ``hf``, ``pickle``...)."""
    for s in specs():
        if s.name == name:
            return s
    raise UnusableInput(f"unknown format {name!r} (known: {', '.join(s.name for s in specs())})")


@functools.cache
def aliases() -> dict[str, FormatSpec]:
    """Every alias a registry entry or ``mcard size --format`` takes -> its format's spec."""
    return {alias: s for s in specs() for alias in s.aliases}


def by_alias(alias: str) -> FormatSpec:
    """The spec of a registry / ``mcard size`` format name (``nf4`` -> ``bnb``); :class:`UnusableInput` otherwise."""
    found = aliases().get(alias.lower())
    if found is None:
        raise UnusableInput(f"unknown format {alias!r} (known: {', '.join(aliases())})")
    return found


def implied_params(alias: str) -> dict[str, Any]:
    """The parameters an alias implies (``nf4`` -> ``{"quant_type": "nf4"}``)."""
    return dict(by_alias(alias).aliases[alias.lower()])


def family(name: str) -> CardSpec:
    """The card of family ``name`` (``gptq``, ``gguf``, ``hf``...)."""
    for s in specs():
        if s.card is not None and s.card.family == name:
            return s.card
    raise UnusableInput(f"unknown card family {name!r}")


def detect(variant: Variant) -> FormatSpec | None:
    """The spec of the format that owns ``variant`` (the first in detection order), or None."""
    for s in detection_order():
        if s.detect(variant):
            return s
    return None


def check_params(alias: str, params: dict[str, Any], for_size: bool = False) -> dict[str, Any]:
    """``params`` for format ``alias`` (a registry / ``mcard size`` name), normalized; :class:`BadParam` otherwise.

    The valid values are the format's own ``PARAMS``; ``mcard size`` and the registry both ask here.
    ``None`` values mean "the default" and are left out.
    """
    from . import params as _params

    given = {k: v for k, v in params.items() if v is not None}
    return _params.check(alias.lower(), dict(by_alias(alias).params), given, for_size)


def params_of(alias: str) -> dict[str, Any]:
    """The format's ``PARAMS`` (name -> :class:`~mcard.formats.params.Param`) for format ``alias``.

    Do not modify the result (it is shared).
    """
    return dict(by_alias(alias).params)


__all__ = ["BadParam", "CardSpec", "DETECT_ORDER", "FormatSpec", "SPEC_MODULES", "aliases", "by_alias", "check_params",
           "detect", "detection_order", "family", "implied_params", "params_of", "spec", "specs"]
