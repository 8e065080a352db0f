"""The quantized layers ``mcard smoke`` exercises, one adapter per format.

Each :class:`Layer` ties together the three views of one quantized linear: the
format module's numpy dequantization (the format's own reading), the torch
reference (:mod:`mcard.reference`) and the CUDA kernel launcher
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

from .errors import UnusableInput
from .variant import Variant

SUPPORTED = ("gptq", "awq", "gguf", "bnb")
GGUF_KERNEL_TYPES = ("Q4_0", "Q4_1", "Q4_K")
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
    note = ""
    if lin.bits == 4 and lin.out_features % 8 == 0:
        dev_arrays: dict[str, Any] = {}

        def kernel(x: Any, out: Any) -> Any:
            import cupy_kernels

            if not dev_arrays:  # packed once into the kernel's layout, on the device
                dev_arrays.update(p=cupy_kernels.pack_gptq(_cp(lin.qweight), _cp(lin.qzeros), _cp(lin.scales),
                                                           lin.g_idx, lin.group_size, lin.checkpoint_format),
                                  b=None if lin.bias is None else _cp(lin.bias))
            return cupy_kernels.int4_matmul(x, dev_arrays["p"], dev_arrays["b"], out)
    else:
        note = f"no kernel for {lin.bits}-bit GPTQ" if lin.bits != 4 else "no kernel: N % 8 != 0"
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
    note = ""
    group = lin.in_features if lin.group_size in (-1, 0) else lin.group_size
    if lin.version == "gemm" and lin.out_features % 8 == 0 and (group % 32 == 0 or group >= lin.in_features):
        dev_arrays: dict[str, Any] = {}

        def kernel(x: Any, out: Any) -> Any:
            import cupy_kernels

            if not dev_arrays:  # packed once into the kernel's layout, on the device
                dev_arrays.update(p=cupy_kernels.pack_awq(_cp(lin.qweight), _cp(lin.qzeros), _cp(lin.scales),
                                                          lin.group_size),
                                  b=None if lin.bias is None else _cp(lin.bias))
            return cupy_kernels.int4_matmul(x, dev_arrays["p"], dev_arrays["b"], out)
    elif lin.version != "gemm":
        note = "no kernel for the AWQ GEMV layout"
    else:
        note = "no kernel: N % 8 != 0" if lin.out_features % 8 else "no kernel: group size not a multiple of 32"
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
    note = ""
    if lin.in_features % 32 == 0 and lin.blocksize % 32 == 0:
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
    else:
        note = "no kernel: K or blocksize not a multiple of 32"
    nbytes = _nbytes(lin.weight, lin.absmax, lin.nested_absmax, lin.quant_map, lin.bias)
    return Layer(name, kind, shape, lambda: mod.dequantize_linear(lin), ref_w, kernel, nbytes, lin.bias, note)


# -- GGUF ---------------------------------------------------------------------------
def _gguf_layer(mod: Any, path: Path, name: str, label: str) -> Layer:
    type_name, raw, shape = mod.load_tensor(path, name)
    shape = (int(shape[0]), int(shape[1]))

    def ref_w(dev: str) -> Any:
        from . import reference as r

        return r.gguf_dequantize(r._t(raw, dev), type_name, shape)

    dev_arrays: dict[str, Any] = {}

    def kernel(x: Any, out: Any) -> Any:
        import cupy_kernels

        if not dev_arrays:  # packed once into the kernel's layout, on the device
            dev_arrays["p"] = cupy_kernels.pack_gguf(_cp(raw), type_name, shape)
        return cupy_kernels.int4_matmul(x, dev_arrays["p"], None, out)

    return Layer(label, f"gguf {type_name}", shape, lambda: mod.dequantize_tensor(path, name), ref_w, kernel,
                 int(raw.nbytes))


def _gguf_layers(mod: Any, variant: Variant, count: int | None, spread: Callable) -> tuple[list[Layer], str]:
    files = variant.files_of("gguf")
    many = len(files) > 1
    candidates: list[tuple[Path, str, str]] = []
    others: Counter[str] = Counter()
    for rel in files:
        path = variant.abspath(rel)
        for name, tname in mod.tensor_types(path).items():
            if tname in _FLOAT_TYPES or not name.endswith(".weight") or name.startswith("token_embd"):
                continue
            if tname in GGUF_KERNEL_TYPES:
                candidates.append((path, name, f"{rel}:{name}" if many else name))
            else:
                others[tname] += 1
    note = ""
    if others:
        note = "tensors of types without a kernel not exercised: " + ", ".join(f"{t} x{n}" for t, n in sorted(others.items()))
    chosen = spread(by_depth([c[2] for c in candidates]), count)
    by_label = {c[2]: c for c in candidates}
    return [_gguf_layer(mod, by_label[lbl][0], by_label[lbl][1], lbl) for lbl in chosen], note


# -- dispatch -----------------------------------------------------------------------
def load_layers(variant: Variant, count: int | None, spread: Callable) -> tuple[str, list[Layer], str]:
    """(format name, the selected layers, a note about what was left out)."""
    from . import formats

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
