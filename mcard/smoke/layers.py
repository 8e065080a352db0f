"""The quantized layers ``mcard smoke`` exercises: each format's spec gives them (its folder's ``smoke.py``).

Each :class:`Layer` ties together the three views of one quantized linear: the
format module's numpy dequantization (the format's own reading), the torch
reference (:mod:`mcard.smoke.reference`) and the CUDA kernel launcher
(:mod:`cupy_kernels`). Nothing here imports torch or CuPy at module level.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import UnusableInput
from ..core.variant import Variant

# Which layers have a CUDA kernel is cupy_kernels.limits' answer, asked by each format's smoke
# module (mcard/formats/<name>/smoke.py, with the layer's shape) and by `mcard plan` (the
# format spec's kernel_runs, with a variant's parameters).
_LAYER = re.compile(r"(?:layers|blk|h|block)\.(\d+)\.")
FLOAT_TYPES = {"F32", "F16", "BF16", "F64"}


@dataclass
class Layer:
    name: str
    kind: str
    shape: tuple[int, int]  # (N, K)
    numpy_weight: Callable[[], np.ndarray]  # the format module's dequantization, [N, K]
    reference_weight: Callable[[str], Any]  # device -> torch float32 [N, K]
    kernel: Callable[[Any, Any], Any] | None  # (x cupy [M, K], out cupy [M, N]) -> out; None: no kernel
    weight_bytes: int  # bytes the kernel streams (packed weights, scales, zeros, ...)
    bias: np.ndarray | None = None
    kernel_note: str = ""  # why there is no kernel, when there is none


def by_depth(names: list[str]) -> list[str]:
    """Order names by their layer number (``layers.N.`` / ``blk.N.``), keeping file order within a layer."""
    def key(item: tuple[int, str]) -> tuple[int, int]:
        found = _LAYER.search(item[1])
        return (int(found.group(1)) if found else -1, item[0])

    return [name for _i, name in sorted(enumerate(names), key=key)]


def nbytes(*arrays: Any) -> int:
    return sum(int(np.asarray(a).nbytes) for a in arrays if a is not None)


def device_array(a: Any) -> Any:
    import cupy

    return cupy.asarray(np.ascontiguousarray(a))


# -- dispatch -----------------------------------------------------------------------
def smoke_formats() -> list[str]:
    """The formats whose specs give smoke layers (those with a kernel tolerance)."""
    from .. import formats

    return [s.name for s in formats.specs() if s.kernel_tolerance is not None]


def load_layers(variant: Variant, count: int | None, spread: Callable) -> tuple[str, list[Layer], str]:
    """(format name, the selected layers, a note about what was left out), from the format's spec."""
    from .. import formats

    spec = formats.detect(variant)
    if spec is None or spec.kernel_tolerance is None:
        raise UnusableInput(f"smoke supports {', '.join(smoke_formats())} variants; this one is "
                            f"{spec.name if spec is not None else 'unrecognized'}", variant.path)
    layers, note = spec.smoke_layers(variant, count, spread)
    if not layers:
        raise UnusableInput(f"no quantized linear layers to smoke-test in this {spec.name} variant", variant.path)
    return spec.name, layers, note
