"""mcard: fetch, validate, size, smoke-test and document quantized LLM variants.

``import mcard`` is cheap; the Python API is ``mcard.api`` (``from mcard import api``),
imported on first use.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("mcard")  # one source of truth: the package metadata (pyproject.toml)
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

_LAZY_SUBMODULES = ("api",)


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
