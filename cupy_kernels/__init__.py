"""CUDA int4 kernels (GPTQ, AWQ, GGUF Q4_0/Q4_1/Q4_K, bitsandbytes NF4/FP4) launched through CuPy.

The ``.cu`` sources sit next to this file and are plain CUDA C that ``nvcc``
also compiles (``tests/test_kernels_compile.py`` checks sm_80 and sm_90).
CuPy is imported only when a kernel is launched; see :mod:`cupy_kernels.launch`.
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
    kernel,
    source,
)

__all__ = [
    "SOURCES",
    "KernelUnavailable",
    "available",
    "awq_matmul",
    "bnb_matmul",
    "gguf_matmul",
    "gptq_matmul",
    "kernel",
    "source",
]
