"""``mcard smoke`` for bitsandbytes NF4/FP4: one quantized linear as a :class:`~mcard.smoke.layers.Layer`.

The three views of the layer: this format's numpy dequantization, the torch reference
(:mod:`mcard.smoke.reference`) and the int4 kernel (:mod:`cupy_kernels`), bound here with the
packer for this format; :mod:`cupy_kernels.limits` says whether the kernel serves the layer.
"""

from __future__ import annotations

from typing import Any

from cupy_kernels import limits as kernel_limits  # no CuPy import

from ...core.variant import Variant
from ...smoke.layers import Layer, device_array as _cp, nbytes as _nbytes
from .. import bnb as mod


def layer(variant: Variant, name: str) -> Layer:
    lin = mod.load_linear(variant, name)
    shape = (lin.out_features, lin.in_features)
    kind = f"bnb {lin.quant_type} bs{lin.blocksize}{' double-quant' if lin.nested_absmax is not None else ''}"

    def absmax(dev: str) -> Any:
        from ...smoke import reference as r

        return r.bnb_absmax(r._t(lin.absmax, dev), lin.nested_absmax, lin.nested_quant_map,
                            lin.nested_offset or 0.0, lin.nested_blocksize or 256)

    def ref_w(dev: str) -> Any:
        from ...smoke import reference as r

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
