"""CUDA int4 x fp16 tensor-core kernels for GPTQ, AWQ, GGUF Q4_0/Q4_1/Q4_K and bitsandbytes NF4/FP4, via CuPy.

``int4.cu`` (with the PTX wrappers of ``ptx.cuh``) is plain CUDA C that ``nvcc`` also
compiles (``tests/smoke/test_kernels_compile.py`` checks sm_80 and sm_90;
``benchmarks/kernel_sass.py`` counts its instructions). Layers are packed once into the
kernel's layout by :mod:`cupy_kernels.pack`. CuPy is imported only when a kernel is
launched; see :mod:`cupy_kernels.launch`.
"""

from __future__ import annotations

from .launch import (
    SOURCES,
    KernelUnavailable,
    available,
    awq_matmul,
    bnb_matmul,
    gguf_matmul,
    gptq_matmul,
    int4_matmul,
    kernel,
    source,
)
from .pack import PackedInt4, pack_awq, pack_bnb, pack_gguf, pack_gptq

__all__ = [
    "SOURCES",
    "KernelUnavailable",
    "PackedInt4",
    "available",
    "awq_matmul",
    "bnb_matmul",
    "gguf_matmul",
    "gptq_matmul",
    "int4_matmul",
    "kernel",
    "pack_awq",
    "pack_bnb",
    "pack_gguf",
    "pack_gptq",
    "source",
]
