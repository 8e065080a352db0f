"""What ptxas says each kernel uses (registers, shared memory, stack, spills) and the occupancy that allows.

Read by ``tests/smoke/test_kernels_compile.py`` (no kernel may spill or use a stack
frame) and ``benchmarks/kernel_resources.py`` (the table in
``benchmarks/RESULTS_resources.md``). Needs ``nvcc``; no GPU.

Occupancy follows the CUDA occupancy calculator's rules: registers are allocated
per warp in units of 256, shared memory per block in units of 128 bytes plus 1 KB
the system reserves per block, and a block is resident only when all of its
warps fit.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Per streaming multiprocessor (CUDA C Programming Guide, "Compute Capabilities").
ARCH_LIMITS: dict[str, dict[str, int]] = {
    "sm_80": {"registers": 65536, "smem": 164 * 1024, "threads": 2048, "blocks": 32},  # A100
    "sm_90": {"registers": 65536, "smem": 228 * 1024, "threads": 2048, "blocks": 32},  # H100, H200
}
REG_UNIT = 256  # registers allocated per warp in multiples of this
SMEM_UNIT = 128  # bytes
SMEM_RESERVED_PER_BLOCK = 1024  # bytes the system keeps per resident block (sm_80 and later)

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


@dataclass(frozen=True)
class KernelResources:
    """One kernel compiled for one architecture."""

    name: str
    arch: str
    registers: int
    smem: int
    stack: int
    spill_stores: int
    spill_loads: int

    def occupancy(self, threads_per_block: int) -> tuple[int, float, str]:
        """(resident blocks per SM, fraction of the SM's threads, the limiting resource)."""
        lim = ARCH_LIMITS[self.arch]
        warps = -(-threads_per_block // 32)
        regs_per_warp = -(-self.registers * 32 // REG_UNIT) * REG_UNIT
        smem_per_block = -(-(self.smem + SMEM_RESERVED_PER_BLOCK) // SMEM_UNIT) * SMEM_UNIT
        limits = {
            "registers": lim["registers"] // (regs_per_warp * warps) if regs_per_warp else lim["blocks"],
            "shared memory": lim["smem"] // smem_per_block,
            "threads": lim["threads"] // threads_per_block,
            "blocks": lim["blocks"],
        }
        limiter = min(limits, key=lambda k: limits[k])
        blocks = limits[limiter]
        return blocks, blocks * threads_per_block / lim["threads"], limiter


def parse_ptxas(text: str) -> list[KernelResources]:
    """The kernels in ``nvcc -Xptxas -v`` output (entry functions only)."""
    out: list[KernelResources] = []
    name: str | None = None
    arch = ""
    props: tuple[int, int, int] | None = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            name, arch, props = m.group(1), m.group(2), None
        elif (m := _PROPS.search(line)) and name:
            props = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        elif (m := _USED.search(line)) and name and props is not None:
            smem = _SMEM.search(line)
            out.append(KernelResources(name, arch, int(m.group(1)), int(smem.group(1)) if smem else 0, *props))
            name = None
    return out


def compile_command(nvcc: str, src: Path, arch: str, out: Path) -> list[str]:
    """nvcc to a cubin (so ptxas runs and reports), warnings as errors."""
    return [nvcc, "-cubin", f"-arch={arch}", "--std=c++17", "--Werror", "all-warnings", "-Xptxas", "-v",
            "-o", str(out), str(src)]


def ptxas_messages_other_than_info(text: str) -> str:
    """What nvcc printed besides ptxas's resource report (warnings, errors)."""
    keep = [ln for ln in text.splitlines()
            if ln.strip() and not ln.startswith("ptxas info") and not _PROPS.search(ln)]
    return "\n".join(keep)


def measure(nvcc: str, src: Path, arch: str, out: Path) -> tuple[int, str, list[KernelResources]]:
    """Compile one source for one architecture: (return code, all messages, resources)."""
    done = subprocess.run(compile_command(nvcc, src, arch, out), capture_output=True, text=True)
    text = done.stdout + done.stderr
    return done.returncode, text, parse_ptxas(text)
