"""``mcard smoke`` for GGUF: one quantized linear as a :class:`~mcard.smoke.layers.Layer`.

The three views of the layer: this format's numpy dequantization, the torch reference
(:mod:`mcard.smoke.reference`) and the int4 kernel (:mod:`cupy_kernels`), bound here with the
packer for this format; :mod:`cupy_kernels.limits` says whether the kernel serves the layer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cupy_kernels import limits as kernel_limits  # no CuPy import

from ...core.variant import Variant
from ...smoke.layers import FLOAT_TYPES, Layer, by_depth, device_array as _cp
from .. import gguf as mod


def layer(path: Path, name: str, label: str) -> Layer:
    type_name, raw, shape = mod.load_tensor(path, name)
    shape = (int(shape[0]), int(shape[1]))

    def ref_w(dev: str) -> Any:
        from ...smoke import reference as r

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


def layers(variant: Variant, count: int | None, spread: Callable) -> tuple[list[Layer], str]:
    """The quantized 2-D weights (token embeddings aside) whose type has a reference.

    Layers of types with a kernel are spread over the depth (``count`` of them); every other
    referenced type present gets one layer (reference check only; all of them with ``count=None``),
    and when no type has a kernel, ``count`` layers are spread over all of them. Types without a
    reference are named in the note.
    """
    from ...smoke.reference import gguf_reference_types

    referenced = gguf_reference_types()
    files = variant.files_of("gguf")
    many = len(files) > 1
    candidates: dict[str, list[tuple[Path, str, str]]] = {}  # type -> (path, tensor, label)
    others: Counter[str] = Counter()
    for rel in files:
        path = variant.abspath(rel)
        for name, tname in mod.tensor_types(path).items():
            if tname in FLOAT_TYPES or not name.endswith(".weight") or name.startswith("token_embd"):
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
    return [layer(by_label[lbl][0], by_label[lbl][1], lbl) for lbl in chosen], note
