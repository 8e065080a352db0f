"""Bit packing shared by the GPTQ and AWQ modules.

Both formats pack b-bit unsigned integers into int32 words as one contiguous
little-endian bit stream: value j of a run sits at bits ``[b*j, b*j + b)`` of
the stream, least significant first, the stream cut into 32-bit words. For
b in {2, 4, 8} a word holds 32/b whole values; for b = 3 a period of 32 values
fills 3 words and values 10 and 21 straddle a word boundary (AutoGPTQ's 3-bit
layout). AWQ additionally permutes the 8 nibbles of each word
(:data:`AWQ_ORDER`).
"""

from __future__ import annotations

from math import gcd

import numpy as np

WORD_BITS = 32
# The group sizes vLLM's Marlin kernels take, for GPTQ (gptq_marlin) and AWQ (awq_marlin) alike.
MARLIN_GROUPS = (-1, 32, 64, 128)


def valid_group_size(group_size: object) -> bool:
    """A group size a GPTQ/AWQ checkpoint can have: -1 (one group spanning K) or a positive integer."""
    return isinstance(group_size, int) and not isinstance(group_size, bool) and (group_size == -1 or group_size > 0)

# AutoAWQ GEMM (awq/modules/linear/gemm.py, ``order_map``): nibble i of packed
# word c holds column 8c + AWQ_ORDER[i].
AWQ_ORDER: tuple[int, ...] = (0, 2, 4, 6, 1, 3, 5, 7)


def period(bits: int) -> tuple[int, int]:
    """(values, words) in one repeating unit of the stream: (8, 1) for 4-bit, (32, 3) for 3-bit."""
    values = WORD_BITS // gcd(bits, WORD_BITS)
    return values, values * bits // WORD_BITS


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``values`` [K, ...] (0..2^bits-1) along axis 0 into int32 [K*bits/32, ...]."""
    n_val, n_word = period(bits)
    k = values.shape[0]
    if k % n_val:
        raise ValueError(f"{k} values cannot be packed at {bits} bits: need a multiple of {n_val}")
    v = values.astype(np.uint64).reshape(k // n_val, n_val, *values.shape[1:])
    out = np.zeros((k // n_val, n_word, *values.shape[1:]), dtype=np.uint64)
    for j in range(n_val):
        word, shift = divmod(j * bits, WORD_BITS)
        out[:, word] |= v[:, j] << np.uint64(shift)
        if shift + bits > WORD_BITS:  # straddles into the next word
            out[:, word + 1] |= v[:, j] >> np.uint64(WORD_BITS - shift)
    out &= np.uint64(0xFFFFFFFF)
    return out.astype(np.uint32).view(np.int32).reshape(k // n_val * n_word, *values.shape[1:])


def unpack_rows(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`: int32 [R, ...] -> int32 [R*32/bits, ...] of values 0..2^bits-1."""
    n_val, n_word = period(bits)
    r = packed.shape[0]
    if r % n_word:
        raise ValueError(f"{r} packed rows are not whole {bits}-bit periods of {n_word} words")
    w = np.ascontiguousarray(packed).view(np.uint32).astype(np.uint64)
    w = w.reshape(r // n_word, n_word, *packed.shape[1:])
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((r // n_word, n_val, *packed.shape[1:]), dtype=np.int32)
    for j in range(n_val):
        word, shift = divmod(j * bits, WORD_BITS)
        v = w[:, word] >> np.uint64(shift)
        if shift + bits > WORD_BITS:
            v |= w[:, word + 1] << np.uint64(WORD_BITS - shift)
        out[:, j] = (v & mask).astype(np.int32)
    return out.reshape(r // n_word * n_val, *packed.shape[1:])


def pack_cols(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack a 2-D ``values`` [R, C] along axis 1 into int32 [R, C*bits/32]."""
    return np.ascontiguousarray(pack_rows(values.T, bits).T)


def unpack_cols(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_cols`: int32 [R, C] -> int32 [R, C*32/bits], unpacked in place along axis 1."""
    n_val, n_word = period(bits)
    r, c = packed.shape
    if c % n_word:
        raise ValueError(f"{c} packed columns are not whole {bits}-bit periods of {n_word} words")
    w = np.ascontiguousarray(packed).view(np.uint32).astype(np.uint64).reshape(r, c // n_word, n_word)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((r, c // n_word, n_val), dtype=np.int32)
    for j in range(n_val):
        word, shift = divmod(j * bits, WORD_BITS)
        v = w[:, :, word] >> np.uint64(shift)
        if shift + bits > WORD_BITS:
            v |= w[:, :, word + 1] << np.uint64(WORD_BITS - shift)
        out[:, :, j] = (v & mask).astype(np.int32)
    return out.reshape(r, c // n_word * n_val)


def _awq_columns(n: int) -> np.ndarray:
    """Stored position -> logical column for ``n`` columns in AWQ nibble order."""
    order = np.asarray(AWQ_ORDER)
    return (np.arange(0, n, len(order))[:, None] + order[None, :]).reshape(-1)


def pack_awq(values: np.ndarray) -> np.ndarray:
    """Pack 4-bit ``values`` [R, N] along N in AWQ order into int32 [R, N/8]."""
    n = values.shape[1]
    if n % len(AWQ_ORDER):
        raise ValueError(f"{n} columns are not a multiple of {len(AWQ_ORDER)}")
    return pack_cols(values[:, _awq_columns(n)], 4)


def unpack_awq(packed: np.ndarray) -> np.ndarray:
    """Unpack AWQ-ordered int32 [R, C] into 4-bit values [R, 8C] in logical column order."""
    stored = unpack_cols(packed, 4)
    out = np.empty_like(stored)
    out[:, _awq_columns(stored.shape[1])] = stored
    return out


def groups_of(k: int, group_size: int) -> tuple[int, int]:
    """(effective group size, number of groups) for ``k`` inputs; -1 means one group of ``k``."""
    g = k if group_size == -1 else group_size
    return g, -(-k // g)
