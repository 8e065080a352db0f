"""``mcard smoke`` for GPTQ: one quantized linear as a :class:`~mcard.smoke.layers.Layer`.

The three views of the layer: this format's numpy dequantization, the torch reference
(:mod:`mcard.smoke.reference`) and the int4 kernel (:mod:`cupy_kernels`), bound here with the
packer for this format; :mod:`cupy_kernels.limits` says whether the kernel serves the layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cupy_kernels import limits as kernel_limits  # no CuPy import

from ...core.variant import Variant
from ...smoke.layers import Layer, device_array as _cp, nbytes as _nbytes
from .. import gptq as mod


def layer(variant: Variant, name: str) -> Layer:
    lin = mod.load_linear(variant, name)
    act = bool(lin.desc_act) or not np.array_equal(
        lin.g_idx, np.arange(lin.in_features) // (lin.in_features if lin.group_size in (-1, 0) else lin.group_size))
    kind = (f"gptq {lin.bits}-bit g{lin.group_size} {'sym' if lin.sym else 'asym'}"
            f"{' act-order' if act else ''} {lin.checkpoint_format}")

    def ref_w(dev: str) -> Any:
        from ...smoke import reference as r

        qweight, qzeros, scales, g_idx = (r._t(a, dev) for a in (lin.qweight, lin.qzeros, lin.scales, lin.g_idx))
        return r.gptq_dequantize(qweight, qzeros, scales, g_idx, lin.bits, lin.checkpoint_format)

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
