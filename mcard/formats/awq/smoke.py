"""``mcard smoke`` for AWQ: one quantized linear as a :class:`~mcard.smoke.layers.Layer`.

The three views of the layer: this format's numpy dequantization, the torch reference
(:mod:`mcard.smoke.reference`) and the int4 kernel (:mod:`cupy_kernels`), bound here with the
packer for this format; :mod:`cupy_kernels.limits` says whether the kernel serves the layer.
"""

from __future__ import annotations

from typing import Any

from cupy_kernels import limits as kernel_limits  # no CuPy import

from ...core.variant import Variant
from ...smoke.layers import Layer, device_array as _cp, nbytes as _nbytes
from .. import awq as mod


def layer(variant: Variant, name: str) -> Layer:
    lin = mod.load_linear(variant, name)
    kind = f"awq {lin.bits}-bit g{lin.group_size} {lin.version}"

    def ref_w(dev: str) -> Any:
        from ...smoke import reference as r

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
