"""SASS instructions per weight of each kernel's hot loop, counted from the cubin (no GPU needed).

Method (``benchmarks/kernel_sass.py`` writes it into ``benchmarks/RESULTS_sass.md``):

1. ``nvcc -std=c++17 -arch=sm_XX -cubin -O3`` compiles ``int4.cu`` as it is (plus
   ``-Xptxas -v`` for the register and spill report, which does not change the code);
   ``cuobjdump -sass`` (PyPI ``nvidia-cuda-cuobjdump`` with ``nvidia-cuda-nvdisasm``)
   disassembles it.
2. The hot loop of a kernel is the longest range ``[target, branch]`` closed by a
   backward ``BRA`` that holds no other control-flow instruction (``BRA``, ``BRX``,
   ``JMP``, ``JMX``, ``CALL``, ``RET``, ``EXIT``, ``BREAK``, ``BSSY``, ``BSYNC``). Without
   a branch inside, every instruction of the range issues once per iteration, so the
   static count is the dynamic one (predicated-off instructions included: they still
   take an issue slot).
3. Weights per iteration (per thread) come from the SASS too: each ``HMMA.16816`` of a
   warp multiplies a k16 x n8 tile of weights, 4 per thread, once per m16 tile of the
   batch (1 for the m8 and m16 kernels, 2 for m32). ``kernel_shapes`` reads the same
   number from the source (``I4Shape``: STAGES x KW weights per iteration) and the test
   checks that both agree.
4. instructions per weight = loop instructions / weights per iteration.

Limits: it counts issue slots, not time. It says nothing about latency (the pipeline
hides it or not), bank conflicts, memory bandwidth or occupancy, and it ignores the
work outside the loop (prologue, reduction, store), which is small next to the loop
for the shapes the benchmark uses (hundreds of iterations per warp) but not for tiny K.
The act-order permutation of x is a separate gather before the kernel and is not
counted here.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import _resources

BUDGET = 2.5  # SASS instructions per weight for the batch-1 kernels on sm_90 (issue #15)
BATCH1 = ("int4_affine_m8", "int4_lut_m8")  # the kernels that serve batch 1
CONTROL = {"BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "BREAK", "BSSY", "BSYNC"}
_FUNC = re.compile(r"^\s*Function\s*:\s*(\w+)", re.M)
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_SHAPE = re.compile(r"struct I4Shape<(\w+),\s*(\w+)>\s*\{\s*enum\s*\{\s*KW\s*=\s*(\d+),\s*STAGES\s*=\s*(\d+)")


@dataclass(frozen=True)
class Insn:
    offset: int
    text: str

    @property
    def opcode(self) -> str:
        """``HMMA`` of ``@!P0 HMMA.16816.F32 R4, ...``."""
        body = re.sub(r"^@!?U?P\w+\s+", "", self.text)
        return body.split()[0].split(".")[0]


@dataclass(frozen=True)
class KernelSass:
    """The counted facts of one kernel on one architecture."""

    kernel: str
    arch: str
    loop_start: str          # first offset of the hot loop, as cuobjdump prints it
    loop_end: str            # last offset (the back edge)
    loop_instructions: int
    weights_per_iteration: int
    hmma: int                # tensor-core instructions in the whole kernel
    hmma_in_loop: int
    registers: int
    spills: int              # bytes of spill stores + loads
    mix: tuple[tuple[str, int], ...]  # opcode counts of the loop, most frequent first

    @property
    def instr_per_weight(self) -> float:
        return self.loop_instructions / self.weights_per_iteration

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "arch": self.arch, "loop_start": self.loop_start, "loop_end": self.loop_end,
                "weights_per_iteration": self.weights_per_iteration,
                "instr_per_weight": round(self.instr_per_weight, 3), "hmma": self.hmma,
                "registers": self.registers, "spills": self.spills}


def find_cuobjdump() -> tuple[str | None, dict[str, str]]:
    """(cuobjdump path, environment to run it in): PATH first, then the PyPI wheels' bin folders.

    cuobjdump -sass runs nvdisasm, which must be on its PATH (``nvidia-cuda-nvdisasm``).
    """
    env = dict(os.environ)
    found = shutil.which("cuobjdump")
    dirs: list[str] = []
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        dirs += [str(p.parent) for p in sorted(Path(root).glob("*/bin/cuobjdump"))]
        dirs += [str(p.parent) for p in sorted(Path(root).glob("*/bin/nvdisasm"))]
    if dirs:
        env["PATH"] = os.pathsep.join(dict.fromkeys(dirs)) + os.pathsep + env.get("PATH", "")
    if found is None:
        found = shutil.which("cuobjdump", path=env["PATH"])
    if found and shutil.which("nvdisasm", path=env["PATH"]) is None:
        return None, env
    return found, env


def compile_command(nvcc: str, src: Path, arch: str, out: Path) -> list[str]:
    """The issue's build: ``nvcc -std=c++17 -arch=sm_XX -cubin -O3``, with ptxas' resource report."""
    return [nvcc, "-std=c++17", f"-arch={arch}", "-cubin", "-O3", "-Xptxas", "-v", "-o", str(out), str(src)]


def parse_sass(text: str) -> dict[str, list[Insn]]:
    """``cuobjdump -sass`` output -> instructions per function."""
    out: dict[str, list[Insn]] = {}
    starts = [(m.start(), m.group(1)) for m in _FUNC.finditer(text)] + [(len(text), "")]
    for (pos, name), (end, _) in itertools.pairwise(starts):
        out[name] = [Insn(int(a, 16), t) for a, t in _INSN.findall(text[pos:end])]
    return out


def hot_loop(insns: list[Insn]) -> tuple[int, int]:
    """(first, last) index of the longest backward-branch loop with no other control flow inside."""
    index = {ins.offset: i for i, ins in enumerate(insns)}
    best: tuple[int, int] | None = None
    for i, ins in enumerate(insns):
        if ins.opcode != "BRA":
            continue
        m = re.search(r"0x([0-9a-f]+)", ins.text)
        target = int(m.group(1), 16) if m else None
        if target is None or target >= ins.offset or target not in index:
            continue
        lo = index[target]
        if any(x.opcode in CONTROL and not _warpsync_idiom(x) for x in insns[lo:i]):
            continue
        if best is None or i - lo > best[1] - best[0]:
            best = (lo, i)
    if best is None:
        raise ValueError("no branch-free loop")
    return best


def _warpsync_idiom(ins: Insn) -> bool:
    """sm_80's convergence code around warp-synchronous loops: ``__syncwarp`` is ``BRA.CONV ~URZ``
    over a ``CALL.REL.NOINC`` of the warp-sync routine (taken only by a diverged warp), and the
    loop's exit is a predicated ``CALL.REL.NOINC`` just before an unconditional back edge."""
    return re.sub(r"^@!?U?P\w+\s+", "", ins.text).startswith(("BRA.CONV ~URZ", "CALL.REL.NOINC"))


def kernel_shapes(source: str) -> dict[str, tuple[int, int]]:
    """``int4_<kind>_m<rows>`` -> (KW, STAGES) from the ``I4Shape`` specializations of int4.cu."""
    shapes: dict[tuple[str, str], tuple[int, int]] = {}
    for kind, rows, kw, stages in _SHAPE.findall(source):
        shapes[(kind, rows)] = (int(kw), int(stages))
    out = {}
    for kind, tag in (("I4_AFFINE", "affine"), ("I4_LUT", "lut")):
        for rows in ("8", "16", "32"):
            shape = shapes.get((kind, rows)) or shapes.get(("KIND", rows))
            if shape:
                out[f"int4_{tag}_m{rows}"] = shape
    return out


def m_tiles(kernel: str) -> int:
    """m16 mma tiles per warp: 2 for the 32-row kernels, else 1."""
    return 2 if kernel.endswith("_m32") else 1


def count(sass_text: str, ptxas_text: str, arch: str) -> list[KernelSass]:
    """Every kernel of one disassembly (with ptxas' report of the same build)."""
    res = {r.name: r for r in _resources.parse_ptxas(ptxas_text) if r.arch == arch}
    out = []
    for name, insns in sorted(parse_sass(sass_text).items()):
        lo, hi = hot_loop(insns)
        loop = insns[lo:hi + 1]
        mix: dict[str, int] = {}
        for ins in loop:
            mix[ins.opcode] = mix.get(ins.opcode, 0) + 1
        hmma_loop = mix.get("HMMA", 0)
        r = res.get(name)
        out.append(KernelSass(
            name, arch, f"{loop[0].offset:04x}", f"{loop[-1].offset:04x}", len(loop),
            hmma_loop * 4 // m_tiles(name), sum(ins.opcode == "HMMA" for ins in insns), hmma_loop,
            r.registers if r else -1, (r.spill_stores + r.spill_loads) if r else -1,
            tuple(sorted(mix.items(), key=lambda kv: (-kv[1], kv[0])))))
    return out


def measure(nvcc: str, cuobjdump: str, env: dict[str, str], src: Path, arch: str, cubin: Path) -> list[KernelSass]:
    """Compile ``src`` for ``arch``, disassemble, count."""
    done = subprocess.run(compile_command(nvcc, src, arch, cubin), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nvcc failed for {src.name} {arch}:\n{done.stdout}{done.stderr}")
    dump = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, env=env)
    if dump.returncode:
        raise RuntimeError(f"cuobjdump failed: {dump.stderr.strip()}")
    return count(dump.stdout, done.stdout + done.stderr, arch)
