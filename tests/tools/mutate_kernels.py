"""Mutation check of the kernel tests: plant known kernel bugs and see the host tests catch each.

Run by hand (a few minutes; not part of CI)::

    python tests/tools/mutate_kernels.py            # every mutant
    python tests/tools/mutate_kernels.py -k lut     # those whose name contains "lut"

Each mutant is one textual edit of one file of ``cupy_kernels/`` (the kernel source
``int4.cu``, its PTX wrappers ``ptx.cuh`` or the load-time packer ``pack.py``): the kinds of
mistakes tensor-core int4 kernels ship with (a wrong fragment lane mapping, a missing or
too shallow cp.async.wait_group, a missing __syncwarp, a wrong magic constant or lop3
immediate, scales applied to the wrong columns or at the wrong time, unguarded tails, a
stage ring off by one, a broken reduction) and the packer's (nibble placement, act-order
permutation, zero offsets, code-book nibble order, coarsened param groups). For each, the
package is copied to a temporary folder, the edit applied, and the host-backend tests in
``tests/smoke/test_kernels.py`` that exercise that path run against the copy (``-x``). A mutant is
*caught* when that run fails. The script prints one line per mutant and exits 1 if any
survives (or an edit no longer applies, so the list stays honest).

Used as a pytest plugin (``-p mutate_kernels``) it points ``cupy_kernels.launch`` at
``$MCARD_KERNEL_DIR``; with the package copy first on ``sys.path`` that is the copy's own
folder, so the sources and the packer the tests use are both the mutated ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
KERNELS = ROOT / "cupy_kernels"

# which host tests exercise a path (pytest -k expressions)
AFFINE = "host and (gptq or awq or gguf or packed)"
LUT = "host and (bnb or blocksizes)"
GEMM = "host and (packed or gptq)"  # batches 9..40: the m16 and m32 kernels
ANY = "host"

# (name, file, exact text, replacement, tests)
MUTANTS = [
    # fragments and the tensor cores
    ("b-fragment-registers-swapped", "int4.cu", "b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]}",
     "b0[2] = {b[1], b[0]}, b1[2] = {b[2], b[3]}", ANY),
    ("b-fragment-k-halves-swapped", "int4.cu", "b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]}",
     "b0[2] = {b[2], b[3]}, b1[2] = {b[0], b[1]}", ANY),
    ("a-fragment-upper-rows-wrong", "int4.cu", "i4_xoff<KW>(mt * 16 + (lane & 15), ch)",
     "i4_xoff<KW>(mt * 16 + (lane & 7), ch)", GEMM),
    ("a-fragment-swizzle-mismatch", "int4.cu", "(lane & 8) ? ZERO : i4_xoff<KW>(lane & 7, ch)",
     "(lane & 8) ? ZERO : i4_xoff<KW>(lane & 7, ch ^ 1)", AFFINE),
    ("second-k16-mma-dropped", "int4.cu", "                    mma_m16n8k16(d, a[mt][1], b1, d);\n", "", ANY),
    # the cp.async pipeline
    ("missing-wait-group", "int4.cu", "            cp_async_wait<STAGES - 2>();  // this lane's", "            // this lane's",
     ANY),
    ("wait-group-one-too-shallow", "int4.cu", "cp_async_wait<STAGES - 2>();  // this lane's",
     "cp_async_wait<STAGES - 1>();  // this lane's", ANY),
    ("missing-syncwarp", "int4.cu", "            __syncwarp();                 // ... and every lane's",
     "            // ... and every lane's", ANY),
    ("stage-ring-off-by-one", "int4.cu", "stages + (s + STAGES - 1) % STAGES * SB", "stages + (s + STAGES) % STAGES * SB",
     ANY),
    ("no-drain-before-reduction", "int4.cu", "    cp_async_wait<0>();  // no copy may still land",
     "    // no copy may still land", ANY),
    # dequantization constants
    ("wrong-lop3-immediate", "int4.cu", "lop3<0xEA>(w, 0x000F000Fu", "lop3<0xE8>(w, 0x000F000Fu", AFFINE),
    ("wrong-magic-constant", "int4.cu", "k1024 = i4_h2(0x64006400u)", "k1024 = i4_h2(0x64016401u)", AFFINE),
    ("wrong-exponent-or", "int4.cu", "lop3<0xEA>(w, 0x00F000F0u, 0x64006400u)", "lop3<0xEA>(w, 0x00F000F0u, 0x60006000u)",
     AFFINE),
    ("upper-nibble-scale-eighth", "int4.cu", "k16th = i4_h2(0x2C002C00u)", "k16th = i4_h2(0x30003000u)", AFFINE),
    ("upper-nibble-offset-48", "int4.cu", "km64 = i4_h2(0xD400D400u)", "km64 = i4_h2(0xD200D200u)", AFFINE),
    ("second-nibble-pair-shift-4", "int4.cu", "const unsigned hi = w >> 8;", "const unsigned hi = w >> 4;", AFFINE),
    ("scale-and-offset-swapped", "int4.cu", "__hfma2(q[i], __low2half2(p), __high2half2(p))",
     "__hfma2(q[i], __high2half2(p), __low2half2(p))", AFFINE),
    ("params-of-the-neighbour-lane", "int4.cu", "c * 128 + g * 16)", "c * 128 + (g ^ 1) * 16)", AFFINE),
    ("param-group-ignores-pshift", "int4.cu", "((p_k + koff) >> pshift)", "((p_k + koff) >> 5)", "host and packed"),
    # the code-book (lut) path
    ("lut-pair-order", "int4.cu", "__halves2half2(code[e & 15], code[e >> 4])", "__halves2half2(code[e >> 4], code[e & 15])",
     LUT),
    ("lut-byte-1-for-byte-0", "int4.cu", "b[0] = lut[w & 0xFFu];", "b[0] = lut[(w >> 8) & 0xFFu];", LUT),
    ("lut-scale-too-early", "int4.cu", "if (c % SC == SC - 1) {", "if (c % SC == 0) {", LUT),
    ("lut-scale-wrong-columns", "int4.cu", "c * 128 + t * 32)", "c * 128 + (t ^ 1) * 32)", LUT),
    ("lut-partial-not-restarted", "int4.cu", "} else if (c % SC == 0) {", "} else if (c < 0) {", LUT),
    # tails, reduction, store
    ("x-k-tail-unguarded", "int4.cu", "x_row[r] && x_k[r] + koff < K ? 16 : 0", "x_row[r] ? 16 : 0", "host and gptq"),
    ("x-rows-past-m", "int4.cu", "x_row[r] = m0 + row < M;", "x_row[r] = true;", ANY),
    ("weights-past-the-last-step", "int4.cu", "lane * 16, w_src + (koff >> 5) * 128 + c * 128, live ? 16 : 0)",
     "lane * 16, w_src + (koff >> 5) * 128 + c * 128, 16)", ANY),
    ("reduction-drops-a-warp", "int4.cu", "wp < I4_WARPS; ++wp", "wp < I4_WARPS - 1; ++wp", ANY),
    ("no-barrier-before-reduction-writes", "int4.cu", "shared memory reused below\n    __syncthreads();",
     "shared memory reused below\n", ANY),
    ("no-barrier-after-reduction-writes", "int4.cu", "        }\n    __syncthreads();\n\n    // Phase 4",
     "        }\n\n    // Phase 4", ANY),
    ("n-tail-unguarded", "int4.cu", "if (gm < M && n < N) {", "if (gm < M) {", ANY),
    ("bias-dropped", "int4.cu", "if (has_bias) v += __half2float(bias[n]);", "", "host and (gptq or from_pack)"),
    # the load-time packer
    ("pack-affine-nibbles-as-lut", "pack.py", '"affine": 2 * _T + 8 * (_I % 4) + _I // 4',
     '"affine": 2 * _T + 8 * (_I // 2) + _I % 2', AFFINE),
    ("pack-v1-zero-unmasked", "pack.py", "z = (z + 1) % 16", "z = z + 1", "host and gptq"),
    ("pack-act-order-x-not-permuted", "pack.py", "perm[pos] = order", "perm[pos] = np.sort(order)", "host and gptq"),
    ("pack-awq-order-not-inverted", "pack.py", "inv = np.argsort(AWQ_ORDER)", "inv = np.array(AWQ_ORDER)", "host and awq"),
    ("pack-q4k-high-min-bits", "pack.py", "hi_m = (sc[..., 8:12] >> 4) | ((sc[..., 4:8] >> 6) << 4)",
     "hi_m = (sc[..., 8:12] >> 4) | ((sc[..., 0:4] >> 6) << 4)", "host and gguf"),
    ("pack-bnb-low-nibble-first", "pack.py", "xp.stack([packed >> 4, packed & 15], axis=1)",
     "xp.stack([packed & 15, packed >> 4], axis=1)", LUT),
    ("pack-groups-coarsened-unchecked", "pack.py",
     "if c % r == 0 and bool((a.reshape(c // r, r, n_p) == a.reshape(c // r, r, n_p)[:, :1]).all()) and (",
     "if c % r == 0 or bool((a.reshape(c // r, r, n_p) == a.reshape(c // r, r, n_p)[:, :1]).all()) and (", AFFINE),
]


def pytest_configure(config) -> None:
    folder = os.environ.get("MCARD_KERNEL_DIR")
    if folder:
        import cupy_kernels
        from cupy_kernels import launch

        if Path(cupy_kernels.__file__).resolve().parent != Path(folder).resolve():
            raise RuntimeError(f"MUTANT-SETUP: cupy_kernels comes from {cupy_kernels.__file__}, not {folder}")
        launch.HERE = Path(folder)


def run_mutant(name: str, file: str, old: str, new: str, tests: str) -> tuple[str, float, str]:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{name}-") as tmp:
        pkg = Path(tmp) / "cupy_kernels"
        shutil.copytree(KERNELS, pkg, ignore=shutil.ignore_patterns("__pycache__"))
        path = pkg / file
        text = path.read_text()
        if text.count(old) != 1:
            return "stale", 0.0, f"the edit matches {text.count(old)} places in {file}"
        path.write_text(text.replace(old, new))
        # cwd = tmp: `python -m pytest` puts it first on sys.path, so `import cupy_kernels` is the copy
        env = dict(os.environ, MCARD_KERNEL_DIR=str(pkg),
                   PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT / "tests" / "tools")]))
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "mutate_kernels", "-p",
                               "no:cacheprovider", "--rootdir", str(ROOT), "-k", tests,
                               str(ROOT / "tests" / "smoke" / "test_kernels.py")],
                              cwd=tmp, env=env, capture_output=True, text=True)
        took = time.monotonic() - t0
    if done.returncode == 0:
        return "SURVIVED", took, ""
    fail = next((ln for ln in done.stdout.splitlines() if ln.startswith(("E ", "FAILED"))), "")
    if "MUTANT-SETUP" in done.stdout + done.stderr:
        return "BROKEN", took, "the tests did not import the mutated copy"
    if "host compile failed" in done.stdout or "error:" in fail or "SyntaxError" in done.stdout:
        return "BROKEN", took, "the mutant does not compile; fix its edit"
    return "caught", took, " ".join(fail.split())[:150]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", default="", help="only mutants whose name contains this")
    args = ap.parse_args(argv)
    bad = 0
    start = time.monotonic()
    for name, file, old, new, tests in MUTANTS:
        if args.k not in name:
            continue
        verdict, took, why = run_mutant(name, file, old, new, tests)
        bad += verdict != "caught"
        print(f"{verdict:8s} {name:36s} {took:6.1f}s  {why}", flush=True)
    print(f"{sum(1 for m in MUTANTS if args.k in m[0]) - bad} of {sum(1 for m in MUTANTS if args.k in m[0])} caught "
          f"in {time.monotonic() - start:.0f} s", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
