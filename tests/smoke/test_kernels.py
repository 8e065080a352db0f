"""Every CUDA kernel against the float32 torch reference on random packed data.

Each test runs on two backends:

* ``cuda`` (marked ``gpu``, skipped without a device): the real CuPy on a GPU;
* ``host``: the same ``.cu`` source compiled for the CPU by ``tests/tools/cudahost``
  (fibers for CUDA threads, real barrier and warp-shuffle semantics, guarded
  buffers, read-only inputs, UBSan, two thread orders compared bit for bit),
  with numpy arrays as the device arrays. The launcher in ``cupy_kernels.launch``
  runs unchanged on both. The host backend runs a lighter set of batches so that
  CI stays quick; the shapes are the same.

Outputs are poisoned with NaN before each launch so an element the kernel never
writes fails. Shapes include partial tiles (N not a multiple of the block's
columns/rows), K not a multiple of 128 or of a kernel step, every group size,
act-order on and off, v1 and v2 zeros, sym and asym, batches 1..32.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cudahost
from kernel_inputs import gguf_raw, rng, scales, words

import cupy_kernels
from cupy_kernels import launch
from mcard.formats import awq, gptq, kquant as _kquant
from mcard.formats.awq import AWQ_ORDER
from mcard.smoke import reference as ref

TOL = 2e-3  # the formats' kernel_tolerance (mcard.smoke.run.kernel_tolerances): fp16 rounding of an fp32 accumulation, 4x margin
GPU_BATCHES = [1, 2, 7, 8, 9, 16, 31, 32]
HOST_BATCHES = [1, 9, 32]  # GEMV; GEMM with a partial M tile; several full tiles
cupy = None  # the backend's module, set by the fixture
BATCHES = GPU_BATCHES


@pytest.fixture(autouse=True, params=["host", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Point this module's ``cupy`` (and the launcher's) at the backend under test."""
    if request.param == "host":
        ok, why = cudahost.available()
        if not ok:
            pytest.skip(f"host CUDA runtime: {why}")
        module = cudahost.fake_cupy()
        monkeypatch.setitem(sys.modules, "cupy", module)
        batches = HOST_BATCHES
    else:
        module = pytest.importorskip("cupy")
        batches = GPU_BATCHES
    launch._module.cache_clear()
    monkeypatch.setattr(sys.modules[__name__], "cupy", module)
    monkeypatch.setattr(sys.modules[__name__], "BATCHES", batches)
    yield request.param
    launch._module.cache_clear()
NF4 = np.array([-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0, 0.0796, 0.1609, 0.2461, 0.3379,
                0.4407, 0.5626, 0.7230, 1.0], dtype=np.float32)


def activations(r: np.random.Generator, m: int, k: int) -> np.ndarray:
    return r.standard_normal((m, k)).astype(np.float16)


def check(run, x16: np.ndarray, w_ref: torch.Tensor, n: int, bias: np.ndarray | None = None) -> None:
    out = cupy.full((x16.shape[0], n), cupy.nan, dtype=cupy.float16)
    got = run(cupy.asarray(x16), out)
    assert got is out
    cupy.cuda.Device().synchronize()
    y = cupy.asnumpy(out).astype(np.float64)
    assert np.isfinite(y).all(), f"{int((~np.isfinite(y)).sum())} elements unwritten or non-finite"
    want = ref.linear(torch.from_numpy(x16), w_ref, bias).double().numpy()
    err = np.linalg.norm(y - want) / np.linalg.norm(want)
    assert err < TOL, f"relative error {err:.2e}"


# -- GPTQ ----------------------------------------------------------------------------
@pytest.mark.parametrize("k,n", [(1120, 136), (640, 64), (4096, 256)])
@pytest.mark.parametrize("group", [32, 64, 128, -1])
@pytest.mark.parametrize("act", [False, True])
@pytest.mark.parametrize("fmt,sym", [("gptq", True), ("gptq", False), ("gptq_v2", False)])
def test_gptq(k: int, n: int, group: int, act: bool, fmt: str, sym: bool) -> None:
    if group != -1 and k % group:
        pytest.skip("GPTQ groups must tile K")
    r = rng(k + n + group)
    g = k if group == -1 else group
    ng = k // g
    qweight = words(r, k // 8, n)
    qzeros = (np.full((ng, n // 8), 0x77777777, np.int64).astype(np.int32) if sym and fmt == "gptq"
              else words(r, ng, n // 8))
    sc = scales(r, ng, n)
    perm = r.permutation(k) if act else np.arange(k)
    g_idx = (np.argsort(perm) // g).astype(np.int32)
    bias = (r.standard_normal(n) * 0.1).astype(np.float16)
    w = ref.gptq_dequantize(qweight, qzeros, sc, g_idx, 4, fmt)
    d = [cupy.asarray(a) for a in (qweight, qzeros, sc, g_idx, bias)]
    for m in BATCHES:
        check(lambda x, out: cupy_kernels.gptq_matmul(x, *d[:4], group, fmt, d[4], out), activations(r, m, k), w, n, bias)


# -- AWQ -----------------------------------------------------------------------------
@pytest.mark.parametrize("k,n", [(160, 144), (1152, 64), (4096, 512)])
@pytest.mark.parametrize("group", [32, 64, 128, -1])
def test_awq(k: int, n: int, group: int) -> None:
    if group != -1 and k % group:
        pytest.skip("AWQ groups must tile K")
    r = rng(k * 3 + n + group)
    ng = 1 if group == -1 else k // group
    qweight, qzeros, sc = words(r, k, n // 8), words(r, ng, n // 8), scales(r, ng, n)
    w = ref.awq_dequantize(qweight, qzeros, sc, group, order=AWQ_ORDER)
    d = [cupy.asarray(a) for a in (qweight, qzeros, sc)]
    for m in BATCHES:
        check(lambda x, out: cupy_kernels.awq_matmul(x, *d, group, None, out), activations(r, m, k), w, n)


# -- GGUF ----------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q4_K"])
@pytest.mark.parametrize("n,k", [(37, 1280), (8, 256), (256, 4096), (64, 3072)])
def test_gguf(type_name: str, n: int, k: int) -> None:
    r = rng(n * k)
    raw = gguf_raw(r, type_name, n, k)
    w = ref.gguf_dequantize(raw, type_name, (n, k))
    d_raw = cupy.asarray(raw)
    for m in BATCHES:
        check(lambda x, out: cupy_kernels.gguf_matmul(x, d_raw, type_name, (n, k), None, out), activations(r, m, k), w, n)


# -- bitsandbytes --------------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(37, 1120), (16, 64), (512, 4096)])
@pytest.mark.parametrize("nested", [False, True])
def test_bnb(n: int, k: int, nested: bool) -> None:
    r = rng(n + k + nested)
    nblocks = -(-n * k // 64)
    packed = r.integers(0, 256, size=(n * k // 2, 1), dtype=np.uint8)
    if nested:
        absmax = r.integers(0, 256, size=nblocks, dtype=np.uint8)
        ncode = np.sort(r.standard_normal(256)).astype(np.float32) * 0.01
        nabs = (r.random(-(-nblocks // 256)) + 0.5).astype(np.float32)
        am = ref.bnb_absmax(absmax, nabs, ncode, 0.02)
        extra = (cupy.asarray(nabs), cupy.asarray(ncode), 0.02)
    else:
        absmax = (r.random(nblocks) * 0.05 + 0.01).astype(np.float32)
        am = ref.bnb_absmax(absmax)
        extra = (None, None, 0.0)
    w = ref.bnb_dequantize(packed, am, NF4, (n, k), 64)
    d = [cupy.asarray(a) for a in (packed, NF4, absmax)]
    for m in BATCHES:
        check(lambda x, out: cupy_kernels.bnb_matmul(x, *d, (n, k), 64, *extra, 256, None, out),
              activations(r, m, k), w, n)


def test_modules_compile_once() -> None:
    a = launch.kernel("int4", "int4_affine_m8")
    b = launch.kernel("int4", "int4_affine_m8")
    assert a is b or launch._module.cache_info().hits > 0


# -- layers written by the format modules' own quantizers ----------------------------
def test_gptq_from_quantize() -> None:
    """A layer written by mcard.formats.gptq.quantize (act-order, asym, v1), through the launcher's default out."""
    r = rng(7)
    lin = gptq.quantize(r.standard_normal((72, 384)).astype(np.float32), 4, 64, desc_act=True, sym=False, rng=r)
    w = ref.gptq_dequantize(lin.qweight, lin.qzeros, lin.scales, lin.g_idx, 4, lin.checkpoint_format)
    x16 = activations(r, 3, 384)
    y = cupy.asnumpy(cupy_kernels.gptq_matmul(cupy.asarray(x16), *(cupy.asarray(a) for a in (
        lin.qweight, lin.qzeros, lin.scales, lin.g_idx)), 64, lin.checkpoint_format)).astype(np.float64)
    want = ref.linear(torch.from_numpy(x16), w).double().numpy()
    assert np.linalg.norm(y - want) / np.linalg.norm(want) < TOL


def test_awq_from_quantize() -> None:
    r = rng(8)
    lin = awq.quantize(r.standard_normal((48, 256)).astype(np.float32), group_size=64)
    w = ref.awq_dequantize(lin.qweight, lin.qzeros, lin.scales, 64, order=AWQ_ORDER)
    d = [cupy.asarray(a) for a in (lin.qweight, lin.qzeros, lin.scales)]
    for m in (1, 5):
        check(lambda x, out: cupy_kernels.awq_matmul(x, *d, 64, None, out), activations(r, m, 256), w, 48)


def test_gguf_q4_k_from_pack() -> None:
    """Q4_K blocks written by mcard.formats.kquant.pack_q4_k (real 6-bit scale/min packing)."""
    r = rng(9)
    n, k = 12, 512
    raw = _kquant.pack_q4_k(r.standard_normal((n * k // 256, 256)).astype(np.float32)).reshape(n, -1)
    w = ref.gguf_dequantize(raw, "Q4_K", (n, k))
    bias = (r.standard_normal(n) * 0.1).astype(np.float16)
    for m in (1, 3):
        check(lambda x, out: cupy_kernels.gguf_matmul(x, cupy.asarray(raw), "Q4_K", (n, k), cupy.asarray(bias), out),
              activations(r, m, k), w, n, bias)


# -- the launcher's guards and the test's own teeth -----------------------------------
def test_launcher_guards() -> None:
    """M == 0 returns an empty result; shapes that would make the kernels read outside an array are refused."""
    r = rng(4)
    k, n = 256, 16
    qweight, qzeros, sc = (cupy.asarray(a) for a in (words(r, k // 8, n), words(r, 2, n // 8), scales(r, 2, n)))
    g_idx = cupy.asarray((np.arange(k) // 128).astype(np.int32))
    x0, x1 = cupy.zeros((0, k), dtype=cupy.float16), cupy.zeros((1, k), dtype=cupy.float16)
    assert cupy_kernels.gptq_matmul(x0, qweight, qzeros, sc, g_idx, 128).shape == (0, n)
    with pytest.raises(ValueError, match="g_idx"):
        cupy_kernels.gptq_matmul(x1, qweight, qzeros, sc, g_idx + 1, 128)
    with pytest.raises(ValueError, match="g_idx"):
        cupy_kernels.gptq_matmul(x1, qweight, qzeros, sc, g_idx[:-8], 128)
    with pytest.raises(ValueError, match="qzeros"):
        cupy_kernels.awq_matmul(x1, cupy.asarray(words(r, k, 2)), cupy.asarray(words(r, 1, 2)),
                                cupy.asarray(scales(r, 1, 16)), 128)
    with pytest.raises(ValueError, match="absmax"):
        cupy_kernels.bnb_matmul(cupy.zeros((1, 64), dtype=cupy.float16), cupy.zeros(8 * 32, dtype=cupy.uint8),
                                cupy.asarray(NF4), cupy.ones(7, dtype=cupy.float32), (8, 64))


def test_a_wrong_layout_fails() -> None:
    """The comparison has teeth: the AWQ kernel's output read as the identity nibble order must fail."""
    r = rng(3)
    k, n = 128, 32
    qweight, qzeros, sc = words(r, k, n // 8), words(r, 1, n // 8), scales(r, 1, n)
    w = ref.awq_dequantize(qweight, qzeros, sc, -1, order=tuple(range(8)))
    d = [cupy.asarray(a) for a in (qweight, qzeros, sc)]
    with pytest.raises(AssertionError, match="relative error"):
        check(lambda x, out: cupy_kernels.awq_matmul(x, *d, -1, None, out), activations(r, 1, k), w, n)


@pytest.mark.parametrize("act", [False, True])
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_gptq_more_groups_than_shared_memory_holds(act: bool, fmt: str) -> None:
    """264 groups (K 8448, group size 32): past the 256 the kernel stages, scales and zeros come from global memory."""
    k, n, group = 8448, 24, 32
    r = rng(k + act)
    qweight, qzeros, sc = words(r, k // 8, n), words(r, k // group, n // 8), scales(r, k // group, n)
    perm = r.permutation(k) if act else np.arange(k)
    g_idx = (np.argsort(perm) // group).astype(np.int32)
    w = ref.gptq_dequantize(qweight, qzeros, sc, g_idx, 4, fmt)
    d = [cupy.asarray(a) for a in (qweight, qzeros, sc, g_idx)]
    for m in BATCHES[:2]:
        check(lambda x, out: cupy_kernels.gptq_matmul(x, *d, group, fmt, None, out), activations(r, m, k), w, n)


# -- the packed layout: load once, multiply many times --------------------------------------
def test_packed_layer_serves_every_batch_kernel() -> None:
    """One pack_gptq (act-order), then M = 0, 1, 8 (m8), 13 (m16), 40 (m32 on two grid rows) through int4_matmul."""
    k, n, group = 512, 40, 64
    r = rng(11)
    qweight, qzeros, sc = words(r, k // 8, n), words(r, k // group, n // 8), scales(r, k // group, n)
    g_idx = (np.argsort(r.permutation(k)) // group).astype(np.int32)
    packed = cupy_kernels.pack_gptq(*(cupy.asarray(a) for a in (qweight, qzeros, sc, g_idx)), group, "gptq", xp=cupy)
    assert packed.kind == "affine" and packed.perm is not None and packed.pshift == 6 and packed.kp == k
    w = ref.gptq_dequantize(qweight, qzeros, sc, g_idx, 4, "gptq")
    assert cupy_kernels.int4_matmul(cupy.zeros((0, k), dtype=cupy.float16), packed).shape == (0, n)
    for m in (1, 8, 13, 40):
        check(lambda x, out: cupy_kernels.int4_matmul(x, packed, None, out), activations(r, m, k), w, n)


def test_gptq_irregular_groups_are_padded_to_chunks() -> None:
    """g_idx with groups of unequal sizes (not multiples of 32), unsorted: each group's run is padded with zero rows."""
    k, n = 384, 32
    r = rng(12)
    sizes = [40, 8, 100, 56, 180]  # sums to 384
    g_idx = r.permutation(np.repeat(np.arange(len(sizes)), sizes)).astype(np.int32)
    qweight, qzeros, sc = words(r, k // 8, n), words(r, len(sizes), n // 8), scales(r, len(sizes), n)
    packed = cupy_kernels.pack_gptq(*(cupy.asarray(a) for a in (qweight, qzeros, sc, g_idx)), 64, "gptq_v2", xp=cupy)
    assert packed.kp > k and packed.pshift == 5
    w = ref.gptq_dequantize(qweight, qzeros, sc, g_idx, 4, "gptq_v2")
    for m in (1, 20):
        check(lambda x, out: cupy_kernels.int4_matmul(x, packed, None, out), activations(r, m, k), w, n)


@pytest.mark.parametrize("blocksize", [32, 128])
def test_bnb_blocksizes(blocksize: int) -> None:
    """Scale groups of 32 k run on the m32 kernel at every batch (the only one that scales every 32 k); 128 on all."""
    n, k = 24, 256
    r = rng(blocksize)
    packed_w = r.integers(0, 256, size=n * k // 2, dtype=np.uint8)
    absmax = (r.random(n * k // blocksize) * 0.05 + 0.01).astype(np.float32)
    w = ref.bnb_dequantize(packed_w, ref.bnb_absmax(absmax), NF4, (n, k), blocksize)
    packed = cupy_kernels.pack_bnb(cupy.asarray(packed_w), cupy.asarray(NF4), cupy.asarray(absmax), (n, k), blocksize,
                                   xp=cupy)
    assert packed.kind == "lut" and packed.pshift == {32: 5, 128: 7}[blocksize]
    for m in (1, 17):
        check(lambda x, out: cupy_kernels.int4_matmul(x, packed, None, out), activations(r, m, k), w, n)
