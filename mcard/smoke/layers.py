"""The quantized layers ``mcard smoke`` exercises, one adapter per format.

Each :class:`Layer` ties together the three views of one quantized linear: the
format module's numpy dequantization (the format's own reading), the torch
reference (:mod:`mcard.smoke.reference`) and the CUDA kernel launcher
(:mod:`cupy_kernels`). Nothing here imports torch or CuPy at module level.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cupy_kernels import limits as kernel_limits  # no CuPy import: which layers the int4 kernels serve

from ..core.errors import UnusableInput
from ..formats import SIZE_FORMATS
from ..core.variant import Variant

SUPPORTED = ("gptq", "awq", "gguf", "bnb")  # format modules smoke loads layers from
# Which layers have a CUDA kernel is cupy_kernels.limits' answer, asked by the layer adapters
# below (with the layer's shape) and by `mcard plan` (kernel_runs, with a variant's parameters).
_LAYER = re.compile(r"(?:layers|blk|h|block)\.(\d+)\.")
_FLOAT_TYPES = {"F32", "F16", "BF16", "F64"}


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


def _nbytes(*arrays: Any) -> int:
    return sum(int(np.asarray(a).nbytes) for a in arrays if a is not None)


def _cp(a: Any) -> Any:
    import cupy

    return cupy.asarray(np.ascontiguousarray(a))


# -- GPTQ ---------------------------------------------------------------------------
def _gptq_layer(mod: Any, variant: Variant, name: str) -> Layer:
    lin = mod.load_linear(variant, name)
    act = bool(lin.desc_act) or not np.array_equal(
        lin.g_idx, np.arange(lin.in_features) // (lin.in_features if lin.group_size in (-1, 0) else lin.group_size))
    kind = (f"gptq {lin.bits}-bit g{lin.group_size} {'sym' if lin.sym else 'asym'}"
            f"{' act-order' if act else ''} {lin.checkpoint_format}")

    def ref_w(dev: str) -> Any:
        from . import reference as r

        return r.gptq_dequantize(*(r._t(a, dev) for a in (lin.qweight, lin.qzeros, lin.scales, lin.g_idx)),
                                 lin.bits, lin.checkpoint_format)

    kernel = None
    note = kernel_limits.why_not_gptq(lin.bits, lin.out_features, lin.in_features)
    if not note:
        dev_arrays: dict[str, Any] = {}

        def kernel(x: Any, out: Any) -> Any:
            import cupy_kernels

            if not dev_arrays:  # packed once into the kernel's layout, on the device
                dev_arrays.update(p=cupy_kernels.pack_gptq(_cp(lin.qweight), _cp(lin.qzeros), _cp(lin.scales),
                                                           lin.g_idx, lin.group_size, lin.checkpoint_format),
                                  b=None if lin.bias is None else _cp(lin.bias))
            return cupy_kernels.int4_matmul(x, dev_arrays["p"], dev_arrays["b"], out)
    return Layer(name, kind, (lin.out_features, lin.in_features), lambda: mod.dequantize_linear(lin), ref_w,
                 kernel, _nbytes(lin.qweight, lin.qzeros, lin.scales, lin.g_idx, lin.bias), lin.bias, note)


# -- AWQ ----------------------------------------------------------------------------
def _awq_layer(mod: Any, variant: Variant, name: str) -> Layer:
    lin = mod.load_linear(variant, name)
    kind = f"awq {lin.bits}-bit g{lin.group_size} {lin.version}"

    def ref_w(dev: str) -> Any:
        from . import reference as r

        if lin.version == "gemv":
            return r.awq_gemv_dequantize(r._t(lin.qweight, dev), lin.qzeros, lin.scales, lin.group_size)
        return r.awq_dequantize(r._t(lin.qweight, dev), lin.qzeros, lin.scales, lin.group_size)

    kernel = None
    note = kernel_limits.why_not_awq(lin.version, lin.group_size, lin.out_features, lin.in_features)
    if not note:
        dev_arrays: dict[str, Any] = {}

        def kernel(x: Any, out: Any) -> Any:
            import cupy_kernels

            if not dev_arrays:  # packed once into the kernel's layout, on the device
                dev_arrays.update(p=cupy_kernels.pack_awq(_cp(lin.qweight), _cp(lin.qzeros), _cp(lin.scales),
                                                          lin.group_size),
                                  b=None if lin.bias is None else _cp(lin.bias))
            return cupy_kernels.int4_matmul(x, dev_arrays["p"], dev_arrays["b"], out)
    return Layer(name, kind, (lin.out_features, lin.in_features), lambda: mod.dequantize_linear(lin), ref_w,
                 kernel, _nbytes(lin.qweight, lin.qzeros, lin.scales, lin.bias), lin.bias, note)


# -- bitsandbytes -------------------------------------------------------------------
def _bnb_layer(mod: Any, variant: Variant, name: str) -> Layer:
    lin = mod.load_linear(variant, name)
    shape = (lin.out_features, lin.in_features)
    kind = f"bnb {lin.quant_type} bs{lin.blocksize}{' double-quant' if lin.nested_absmax is not None else ''}"

    def absmax(dev: str) -> Any:
        from . import reference as r

        return r.bnb_absmax(r._t(lin.absmax, dev), lin.nested_absmax, lin.nested_quant_map,
                            lin.nested_offset or 0.0, lin.nested_blocksize or 256)

    def ref_w(dev: str) -> Any:
        from . import reference as r

        return r.bnb_dequantize(r._t(lin.weight, dev), absmax(dev), lin.quant_map, shape, lin.blocksize)

    kernel = None
    note = kernel_limits.why_not_bnb(lin.blocksize, lin.in_features)
    if not note:
        dev_arrays: dict[str, Any] = {}

        def kernel(x: Any, out: Any) -> Any:
            import cupy_kernels

            if not dev_arrays:  # packed once into the kernel's layout, on the device
                dev_arrays.update(
                    p=cupy_kernels.pack_bnb(
                        _cp(lin.weight), _cp(lin.quant_map), _cp(lin.absmax), shape, lin.blocksize,
                        None if lin.nested_absmax is None else _cp(lin.nested_absmax),
                        None if lin.nested_quant_map is None else _cp(lin.nested_quant_map),
                        lin.nested_offset or 0.0, lin.nested_blocksize or 256),
                    b=None if lin.bias is None else _cp(lin.bias))
            return cupy_kernels.int4_matmul(x, dev_arrays["p"], dev_arrays["b"], out)
    nbytes = _nbytes(lin.weight, lin.absmax, lin.nested_absmax, lin.quant_map, lin.bias)
    return Layer(name, kind, shape, lambda: mod.dequantize_linear(lin), ref_w, kernel, nbytes, lin.bias, note)


# -- GGUF ---------------------------------------------------------------------------
def _gguf_layer(mod: Any, path: Path, name: str, label: str) -> Layer:
    type_name, raw, shape = mod.load_tensor(path, name)
    shape = (int(shape[0]), int(shape[1]))

    def ref_w(dev: str) -> Any:
        from . import reference as r

        return r.gguf_dequantize(r._t(raw, dev), type_name, shape)

    kernel = None
    note = kernel_limits.why_not_gguf(type_name)
    if not note:
        dev_arrays: dict[str, Any] = {}

        def kernel(x: Any, out: Any) -> Any:
            import cupy_kernels

            if not dev_arrays:  # packed once into the kernel's layout, on the device
                dev_arrays["p"] = cupy_kernels.pack_gguf(_cp(raw), type_name, shape)
            return cupy_kernels.int4_matmul(x, dev_arrays["p"], None, out)
    return Layer(label, f"gguf {type_name}", shape, lambda: mod.dequantize_tensor(path, name), ref_w, kernel,
                 int(raw.nbytes), kernel_note=note)


def _gguf_layers(mod: Any, variant: Variant, count: int | None, spread: Callable) -> tuple[list[Layer], str]:
    """The quantized 2-D weights (token embeddings aside) whose type has a reference.

    Layers of types with a kernel are spread over the depth (``count`` of them); every other
    referenced type present gets one layer (reference check only; all of them with ``count=None``),
    and when no type has a kernel, ``count`` layers are spread over all of them. Types without a
    reference are named in the note.
    """
    from .reference import gguf_reference_types

    referenced = gguf_reference_types()
    files = variant.files_of("gguf")
    many = len(files) > 1
    candidates: dict[str, list[tuple[Path, str, str]]] = {}  # type -> (path, tensor, label)
    others: Counter[str] = Counter()
    for rel in files:
        path = variant.abspath(rel)
        for name, tname in mod.tensor_types(path).items():
            if tname in _FLOAT_TYPES or not name.endswith(".weight") or name.startswith("token_embd"):
                continue
            if tname in referenced:
                candidates.setdefault(tname, []).append((path, name, f"{rel}:{name}" if many else name))
            else:
                others[tname] += 1
    note = ""
    if others:
        note = "tensors of types without a reference not exercised: " + ", ".join(
            f"{t} x{n}" for t, n in sorted(others.items()))
    by_label = {c[2]: c for cs in candidates.values() for c in cs}
    with_kernel = [c[2] for t, cs in candidates.items() if not kernel_limits.why_not_gguf(t) for c in cs]
    without = {t: [c[2] for c in cs] for t, cs in candidates.items() if kernel_limits.why_not_gguf(t)}
    if count is None:
        chosen = by_depth(list(by_label))
    elif with_kernel:
        chosen = spread(by_depth(with_kernel), count) + [spread(by_depth(labels), 1)[0] for labels in without.values()]
    else:
        chosen = spread(by_depth([lbl for labels in without.values() for lbl in labels]), count)
    return [_gguf_layer(mod, by_label[lbl][0], by_label[lbl][1], lbl) for lbl in chosen], note


# -- what a registry variant will run -------------------------------------------------
def smoke_module(fmt: str) -> str | None:
    """The format module smoke loads a registry format's layers with (``nf4`` -> ``bnb``), or None."""
    module = SIZE_FORMATS.get(fmt.lower(), (None,))[0]
    return module if module in SUPPORTED else None


def kernel_runs(fmt: str, params: dict[str, Any], tensor_types: set[str] | None = None) -> bool:
    """Whether smoke would run a CUDA kernel for a variant of registry format ``fmt``.

    ``params``: the variant's bits / group_size / version (bitsandbytes: blocksize, when known);
    ``tensor_types``: for GGUF, the ggml types of its quantized tensors (its mix). Asked of
    :mod:`cupy_kernels.limits`, as the layer adapters above ask it; shapes are not known here
    (N and K multiples of 8 or 32 hold for every real model) and are not checked.
    """
    module = smoke_module(fmt)
    if module == "gptq":
        return not kernel_limits.why_not_gptq(params.get("bits"))
    if module == "awq":
        return not kernel_limits.why_not_awq(params.get("version"), params.get("group_size"))
    if module == "gguf":
        return any(not kernel_limits.why_not_gguf(t) for t in tensor_types or ())
    if module == "bnb":
        return not kernel_limits.why_not_bnb(params.get("blocksize"))
    return False


# -- dispatch -----------------------------------------------------------------------
def load_layers(variant: Variant, count: int | None, spread: Callable) -> tuple[str, list[Layer], str]:
    """(format name, the selected layers, a note about what was left out)."""
    from .. import formats

    mod = formats.detect(variant)
    name = getattr(mod, "NAME", None) if mod is not None else None
    if name not in SUPPORTED:
        raise UnusableInput(f"smoke supports {', '.join(SUPPORTED)} variants; this one is {name or 'unrecognized'}",
                            variant.path)
    if name == "gguf":
        layers, note = _gguf_layers(mod, variant, count, spread)
    else:
        loader = {"gptq": _gptq_layer, "awq": _awq_layer, "bnb": _bnb_layer}[name]
        layers = [loader(mod, variant, n) for n in spread(by_depth(list(mod.quantized_linears(variant))), count)]
        note = ""
    if not layers:
        raise UnusableInput(f"no quantized linear layers to smoke-test in this {name} variant", variant.path)
    return str(name), layers, note
