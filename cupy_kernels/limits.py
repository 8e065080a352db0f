"""Which layers the int4 kernels serve: formats, bit widths, GGUF types, group sizes, shapes.

One source for the question "would an int4 kernel run for this layer?": the packers
(:mod:`cupy_kernels.pack`) and the launcher refuse what these functions refuse,
``mcard smoke`` asks them per layer and ``mcard plan`` per registry variant (which
knows the parameters but not the shapes: a dimension given as ``None`` is taken as
served, and every real model's dimensions are). Nothing here imports CuPy or numpy.

Each ``why_not_*`` function returns ``""`` when the kernels serve such a layer and
otherwise the reason in a few words, as ``mcard smoke`` prints it.

Why the limits are what they are:

* 4-bit only: the kernels dequantize one 4-bit code per weight (GPTQ 2/3/8-bit, the
  AWQ GEMV layout and every GGUF type but Q4_0 / Q4_1 / Q4_K have no kernel).
* every 32-k chunk of the tile layout (``CHUNK``) reads one scale/zero pair per
  column, so a scale group must be a whole number of chunks. GPTQ's groups are
  padded to 32 k at pack time (its g_idx may be irregular anyway, act-order); AWQ
  and bitsandbytes are packed in their own k order, so a group (blocksize) that is
  not a multiple of 32 has no kernel unless one group spans all of K.
* x rows are read 16 bytes (8 fp16) at a time: K a multiple of ``K_MULTIPLE``.
* GPTQ and AWQ pack 8 columns' zeros in one int32: N a multiple of ``N_MULTIPLE``.
"""

from __future__ import annotations

CHUNK = 32       # k per chunk of the tile layout (pack.py writes it, int4.cu reads it)
K_MULTIPLE = 8   # x rows are loaded 16 bytes at a time
N_MULTIPLE = 8   # GPTQ / AWQ: 8 columns of zeros per int32 word
GPTQ_BITS = (4,)
AWQ_VERSIONS = ("gemm",)
# GGUF types with a kernel: (weights per block, bytes per block), the ggml block geometry the packer reads
GGUF_BLOCKS = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q4_K": (256, 144)}


def _k(k: int | None) -> str:
    return f"no kernel: K % {K_MULTIPLE} != 0" if k is not None and k % K_MULTIPLE else ""


def _n(n: int | None) -> str:
    return f"no kernel: N % {N_MULTIPLE} != 0" if n is not None and n % N_MULTIPLE else ""


def _group(group_size: int | None, k: int | None, what: str) -> str:
    """A scale group must be whole 32-k chunks, or span all of K (-1 / 0: one group per column)."""
    if group_size is None or group_size in (-1, 0) or group_size % CHUNK == 0:
        return ""
    if k is not None and group_size >= k:
        return ""
    return f"no kernel for {what} {group_size} (not a multiple of {CHUNK})"


def why_not_gptq(bits: int | None, n: int | None = None, k: int | None = None) -> str:
    """GPTQ (AutoGPTQ / GPTQModel, v1 or v2, any group size, act-order or not)."""
    if bits not in GPTQ_BITS:
        return f"no kernel for {bits}-bit GPTQ"
    return _n(n) or _k(k)


def why_not_awq(version: str | None, group_size: int | None = None, n: int | None = None,
                k: int | None = None) -> str:
    """AWQ: the GEMM layout, group sizes a multiple of 32 (or one group spanning K)."""
    if str(version).lower() not in AWQ_VERSIONS:
        return "no kernel for the AWQ GEMV layout"
    return _n(n) or _k(k) or _group(group_size, k, "AWQ group size")


def why_not_gguf(type_name: str) -> str:
    """GGUF / GGML tensor types: Q4_0, Q4_1 and Q4_K."""
    return "" if type_name in GGUF_BLOCKS else f"no kernel for GGUF {type_name}"


def why_not_bnb(blocksize: int | None = None, k: int | None = None) -> str:
    """bitsandbytes NF4 / FP4 (nested absmax or not): K and the blocksize multiples of 32."""
    if k is not None and k % CHUNK:
        return f"no kernel: K % {CHUNK} != 0"
    if blocksize is not None and blocksize % CHUNK:
        return f"no kernel for bitsandbytes blocksize {blocksize} (not a multiple of {CHUNK})"
    return ""
