"""Mutation check of the kernel tests: plant known kernel bugs and see the host tests catch each.

Run by hand (a few minutes; not part of CI)::

    python tests/mutate_kernels.py            # every mutant
    python tests/mutate_kernels.py -k gptq    # those whose name contains "gptq"

Each mutant is one textual edit of one ``.cu`` file in ``cupy_kernels/``: the
kinds of mistakes real int4 kernels have shipped with (nibble order, zeros off by
one or unmasked, act-order ignored, a missing barrier, an incomplete reduction,
unguarded tails, a wrong k-quant scale unpacking). For each, the sources are
copied to a temporary folder, the edit applied, and the tests of that kernel in
``tests/test_kernels.py`` run on the host backend (``-x``) with the launcher
pointed at the copy. A mutant is
*caught* when that run fails. The script prints one line per mutant and exits 1
if any survives (or an edit no longer applies, so the list stays honest).

Used as a pytest plugin (``-p mutate_kernels``) it points
``cupy_kernels.launch`` at ``$MCARD_KERNEL_DIR``; that is how the runs above see
the mutated copy.
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

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "cupy_kernels"

FAMILY = {"gptq.cu": "gptq", "awq.cu": "awq", "gguf.cu": "gguf", "nf4.cu": "bnb"}  # which tests to run

# (name, file, exact text, replacement)
MUTANTS = [
    ("gptq-no-barrier-after-step", "gptq.cu", "        __syncthreads();  // xs and gs are overwritten", "        //"),
    ("gptq-v1-zero-unmasked", "gptq.cu", "(zc + 1) & 15u : zc", "(zc + 1) : zc"),
    ("gptq-v1-zero-not-added", "gptq.cu", "(zc + 1) & 15u : zc", "zc : zc"),
    ("gptq-v1-zero-unmasked-global", "gptq.cu", "((zc + 1) & 15)", "(zc + 1)"),
    ("gptq-staged-zero-lost", "gptq.cu", "z[c] = (int)(ev[c] >> 16);", "z[c] = (int)(ev[c] >> 20);"),
    ("gptq-staged-wrong-columns", "gptq.cu", "&sz[g][nl * 4]", "&sz[g][(nl ^ 1) * 4]"),
    ("gptq-prefetch-past-the-end", "gptq.cu", "r + GPTQ_KSLICES < KW", "r < KW"),
    ("gptq-prefetch-wrong-row", "gptq.cu", "(size_t)(r + GPTQ_KSLICES) * N", "(size_t)(r + GPTQ_KSLICES - 1) * N"),
    ("gptq-act-order-ignored", "gptq.cu", "use_g_idx ? gs[kk] : k / group_size", "k / group_size"),
    ("gptq-nibble-order-reversed", "gptq.cu", "(wc[c] >> (4 * j)) & 15u", "(wc[c] >> (4 * (7 - j))) & 15u"),
    ("gptq-zero-nibble-shifted", "gptq.cu", "(zw >> (zshift + 4 * c)) & 15", "(zw >> (4 * c)) & 15"),
    ("gptq-half-reduction", "gptq.cu", "off = GPTQ_LANES_N; off < 32;", "off = GPTQ_LANES_N; off < 16;"),
    ("gptq-n-tail-unguarded", "gptq.cu", "if (gm < M && n < N) {", "if (gm < M) {"),
    ("gptq-k-tail-unguarded", "gptq.cu", "(gm < M && gk < K) ? __half2float", "(gm < M) ? __half2float"),
    ("gptq-bias-dropped", "gptq.cu", "if (has_bias) v += __half2float(bias[n]);", ""),
    ("awq-identity-order", "awq.cu", "{0, 4, 1, 5, 2, 6, 3, 7}", "{0, 1, 2, 3, 4, 5, 6, 7}"),
    ("awq-group-off-by-one", "awq.cu", "const int g = k / group_size;", "const int g = (k + 1) / group_size;"),
    ("awq-scale-halves-swapped", "awq.cu", "(c & 1) ? __high2float(sp) : __low2float(sp)",
     "(c & 1) ? __low2float(sp) : __high2float(sp)"),
    ("awq-no-barrier-before-reduce", "awq.cu", "    }\n    __syncthreads();\n\n    // Phase 4",
     "    }\n\n    // Phase 4"),
    ("gguf-q4_0-offset-7", "gguf.cu", "d * (sq - 8.f * sx)", "d * (sq - 7.f * sx)"),
    ("gguf-q4_1-min-ignored", "gguf.cu", "fmaf(d, sq, mn * sx)", "d * sq"),
    ("gguf-q4_k-high-scale-bits", "gguf.cu", "((SCB(j - 4) >> 6) << 4)", "((SCB(j - 4) >> 6) << 3)"),
    ("gguf-q4_k-min-from-scale", "gguf.cu", "mnv[t] = SCB(j + 4) & 63;", "mnv[t] = SCB(j) & 63;"),
    ("gguf-no-barrier-after-step", "gguf.cu", "        }\n        __syncthreads();\n    }\n    // Phase 3",
     "        }\n    }\n    // Phase 3"),
    ("nf4-no-barrier-after-step", "nf4.cu", "        }\n        __syncthreads();\n    }\n\n    // Phase 3",
     "        }\n    }\n\n    // Phase 3"),
    ("nf4-low-nibble-first", "nf4.cu", "cb[byte >> 4], s);      // even", "cb[byte & 15u], s);      // even"),
    ("nf4-nested-offset-dropped", "nf4.cu", "nested_absmax[blk / nested_blocksize] + nested_offset",
     "nested_absmax[blk / nested_blocksize]"),
    ("nf4-codebook-unpublished", "nf4.cu", "if (threadIdx.x < 16) cb[threadIdx.x] = code[threadIdx.x];",
     "if (threadIdx.x < 16 && M < 0) cb[threadIdx.x] = code[threadIdx.x];"),
]


def pytest_configure(config) -> None:  # noqa: ANN001 - pytest plugin hook
    folder = os.environ.get("MCARD_KERNEL_DIR")
    if folder:
        from cupy_kernels import launch

        launch.HERE = Path(folder)


def run_mutant(name: str, file: str, old: str, new: str) -> tuple[str, float, str]:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{name}-") as tmp:
        for cu in KERNELS.glob("*.cu"):
            shutil.copy(cu, tmp)
        path = Path(tmp) / file
        text = path.read_text()
        if text.count(old) != 1:
            return "stale", 0.0, f"the edit matches {text.count(old)} places in {file}"
        path.write_text(text.replace(old, new))
        env = dict(os.environ, MCARD_KERNEL_DIR=tmp, PYTHONPATH=str(ROOT / "tests"))
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "mutate_kernels", "-p",
                               "no:cacheprovider", "-k", f"host and {FAMILY[file]}",
                               str(ROOT / "tests" / "test_kernels.py")],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        took = time.monotonic() - t0
    if done.returncode == 0:
        return "SURVIVED", took, ""
    fail = next((ln for ln in done.stdout.splitlines() if ln.startswith(("E ", "FAILED"))), "")
    if "host compile failed" in done.stdout or "error:" in fail:
        return "BROKEN", took, "the mutant does not compile; fix its edit"
    return "caught", took, " ".join(fail.split())[:150]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", default="", help="only mutants whose name contains this")
    args = ap.parse_args(argv)
    bad = 0
    for name, file, old, new in MUTANTS:
        if args.k not in name:
            continue
        verdict, took, why = run_mutant(name, file, old, new)
        bad += verdict != "caught"
        print(f"{verdict:8s} {name:32s} {took:6.1f}s  {why}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
