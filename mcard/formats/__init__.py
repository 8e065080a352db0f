"""One module per format, each holding all of that format's layout knowledge.

Every format module defines:

``NAME``
    The format's name as reported by ``validate`` (``gptq``, ``gguf``...).
``detect(variant) -> bool``
    Whether a :class:`~mcard.core.variant.Variant` is in this format (cheap: configs,
    tensor names, magics).
``check(variant, report) -> None``
    Fill ``report.format``, ``params``, ``config_source``, ``runtimes`` and
    ``predicted_bytes`` and add findings. Reads headers and small tensors only.

and, where the format has them:

``predict_size(shape, **params) -> SizeEstimate``
    Exact size from a :class:`~mcard.core.arch.ModelShape` and quant parameters.
``dequantize(variant, name) -> numpy.ndarray``
    float32, in ``nn.Linear.weight`` orientation ([out, in]) for safetensors
    formats, gguf's ``[rows, cols]`` for GGUF tensor names.

Builders that write format-exact files (``write_variant``/``pack``) live in the
same module: the tests, the smoke test and the demo all use them.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

from ..core.errors import UnusableInput
from ..core.variant import Variant
from .params import BadParam

# Detection order matters: the first module whose detect() says yes owns the variant.
DETECT_ORDER = ("gguf", "ggml", "lora", "gptq", "awq", "bnb", "hf", "pickled")

# `mcard size --format X` -> (module name, parameters implied by the name).
SIZE_FORMATS: dict[str, tuple[str, dict[str, str]]] = {
    "gptq": ("gptq", {}),
    "awq": ("awq", {}),
    "gguf": ("gguf", {}),
    "ggml": ("ggml", {}),
    "nf4": ("bnb", {"quant_type": "nf4"}),
    "fp4": ("bnb", {"quant_type": "fp4"}),
    "fp16": ("hf", {"dtype": "F16"}),
    "bf16": ("hf", {"dtype": "BF16"}),
    "fp32": ("hf", {"dtype": "F32"}),
    "lora": ("lora", {}),
}


def get(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


def available() -> list[ModuleType]:
    mods = []
    for name in DETECT_ORDER:
        try:
            mods.append(get(name))
        except ModuleNotFoundError as exc:  # a format module not written yet
            if exc.name != f"{__name__}.{name}":
                raise
    return mods


def detect(variant: Variant) -> ModuleType | None:
    for module in available():
        if module.detect(variant):
            return module
    return None


def check_params(fmt: str, params: dict[str, Any], for_size: bool = False) -> dict[str, Any]:
    """``params`` for format ``fmt`` (a key of :data:`SIZE_FORMATS`), normalized; :class:`BadParam` otherwise.

    The valid values are the format module's own ``PARAMS``; ``mcard size`` and the registry both ask here.
    ``None`` values mean "the default" and are left out.
    """
    from . import params as _params

    given = {k: v for k, v in params.items() if v is not None}
    return _params.check(fmt.lower(), params_of(fmt), given, for_size)


def params_of(fmt: str) -> dict[str, Any]:
    """The format module's ``PARAMS`` (name -> :class:`~mcard.formats.params.Param`) for format ``fmt``.

    Do not modify the result (it is shared).
    """
    entry = SIZE_FORMATS.get(fmt.lower())
    if entry is None:
        raise UnusableInput(f"unknown format {fmt!r} (known: {', '.join(SIZE_FORMATS)})")
    return _module_params(entry[0])


@functools.cache
def _module_params(module_name: str) -> dict[str, Any]:
    return getattr(get(module_name), "PARAMS", {})


__all__ = ["BadParam", "DETECT_ORDER", "SIZE_FORMATS", "available", "check_params", "detect", "for_size", "get",
           "params_of"]


def for_size(fmt: str) -> tuple[ModuleType, dict[str, str]] | None:
    """The module that predicts sizes for ``fmt`` and the parameters its name implies."""
    entry = SIZE_FORMATS.get(fmt.lower())
    if entry is None:
        return None
    try:
        module = get(entry[0])
    except ModuleNotFoundError:
        return None
    if not hasattr(module, "predict_size"):
        return None
    return module, dict(entry[1])
