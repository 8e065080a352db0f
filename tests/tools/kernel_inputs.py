"""Random kernel inputs for the kernel tests (tests/smoke/test_kernels.py, on a GPU and on the host runtime)."""

from __future__ import annotations

import numpy as np

from mcard.smoke import reference as ref


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def words(r: np.random.Generator, *shape: int) -> np.ndarray:
    """Random packed int32 words (every nibble pattern, sign bits included)."""
    return r.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32).view(np.int32)


def scales(r: np.random.Generator, *shape: int) -> np.ndarray:
    return (r.random(shape) * 0.02 + 0.002).astype(np.float16)


def gguf_raw(r: np.random.Generator, type_name: str, rows: int, cols: int) -> np.ndarray:
    """Random GGUF blocks of ``type_name`` with small finite fp16 d (and dmin/m) fields."""
    per, nbytes = ref.GGUF_BLOCKS[type_name]
    halves = 1 if type_name == "Q4_0" else 2
    raw = r.integers(0, 256, size=(rows, cols // per, nbytes), dtype=np.uint8)
    hv = (r.standard_normal((rows, cols // per, halves)) * 0.01).astype("<f2")
    raw[..., : 2 * halves] = hv.view(np.uint8).reshape(rows, cols // per, 2 * halves)
    return raw.reshape(rows, -1)
