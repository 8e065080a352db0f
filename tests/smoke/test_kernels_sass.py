"""The instruction budget, counted from the cubins (no GPU): the batch-1 kernels stay at or under
2.5 SASS instructions per weight on sm_90, every kernel uses the tensor cores, nothing spills.

Method and limits: cupy_kernels/_sass.py; report: benchmarks/kernel_sass.py -> RESULTS_sass.md.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from cupy_kernels import _sass
from helpers import ROOT

SOURCE = ROOT / "cupy_kernels" / "int4.cu"
NVCC = shutil.which("nvcc")
CUOBJDUMP = _sass.find_cuobjdump()[0]
LAUNCHED = {f"int4_{kind}_m{rows}" for kind in ("affine", "lut") for rows in (8, 16, 32)}

pytestmark = pytest.mark.skipif(NVCC is None or CUOBJDUMP is None,
                                reason="needs nvcc and cuobjdump + nvdisasm (pip install -e '.[test]')")


def _script():
    spec = importlib.util.spec_from_file_location("kernel_sass", ROOT / "benchmarks" / "kernel_sass.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rows() -> list[_sass.KernelSass]:
    return _script().run(SOURCE)


def test_every_kernel_on_both_architectures(rows) -> None:
    assert {(r.kernel, r.arch) for r in rows} == {(k, a) for k in LAUNCHED for a in ("sm_80", "sm_90")}


def test_batch1_kernels_within_budget_on_sm90(rows) -> None:
    for r in rows:
        if r.kernel in _sass.BATCH1 and r.arch == "sm_90":
            assert r.instr_per_weight <= _sass.BUDGET, (
                f"{r.kernel}: {r.loop_instructions} instructions for {r.weights_per_iteration} weights "
                f"= {r.instr_per_weight:.2f} per weight > {_sass.BUDGET}; mix {r.mix[:8]}")


def test_every_kernel_uses_tensor_cores_in_its_loop_and_nothing_spills(rows) -> None:
    for r in rows:
        assert r.hmma_in_loop > 0 and r.hmma == r.hmma_in_loop, f"{r.kernel} {r.arch}: HMMA {r.hmma_in_loop}/{r.hmma}"
        assert r.spills == 0 and r.registers > 0, f"{r.kernel} {r.arch}: {r.spills} bytes spilled"


def test_weights_per_iteration_agree_with_the_source(rows) -> None:
    """HMMA count (SASS) and STAGES x KW (int4.cu's I4Shape) must give the same weights per iteration."""
    shapes = _sass.kernel_shapes(SOURCE.read_text())
    assert set(shapes) == LAUNCHED
    for r in rows:
        kw, stages = shapes[r.kernel]
        assert r.weights_per_iteration == kw * stages, (r.kernel, r.arch, r.weights_per_iteration, kw, stages)


def test_sm90_hot_loops_have_only_their_back_edge(tmp_path: Path) -> None:
    """Recount one disassembly by hand: exactly one control-flow instruction, the last, branching to the first."""
    cubin = tmp_path / "k.cubin"
    rows90 = _sass.measure(NVCC, CUOBJDUMP, _sass.find_cuobjdump()[1], SOURCE, "sm_90", cubin)
    import subprocess

    text = subprocess.run([CUOBJDUMP, "-sass", str(cubin)], capture_output=True, text=True,
                          env=_sass.find_cuobjdump()[1]).stdout
    funcs = _sass.parse_sass(text)
    for r in rows90:
        insns = funcs[r.kernel]
        start, end = int(r.loop_start, 16), int(r.loop_end, 16)
        loop = [i for i in insns if start <= i.offset <= end]
        assert len(loop) == r.loop_instructions == (end - start) // 16 + 1
        control = [i for i in loop if i.opcode in _sass.CONTROL]
        assert control == [loop[-1]] and f"0x{start:x}" in loop[-1].text, (r.kernel, [c.text for c in control])


def test_json_output_has_exactly_the_documented_keys(rows, monkeypatch, capsys) -> None:
    script = _script()
    monkeypatch.setattr(script, "run", lambda src: rows)
    assert script.main(["--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got) == len(rows)
    assert all(set(o) == {"kernel", "arch", "loop_start", "loop_end", "weights_per_iteration", "instr_per_weight",
                          "hmma", "registers", "spills"} for o in got)
    one = next(o for o in got if o["kernel"] == "int4_affine_m8" and o["arch"] == "sm_90")
    assert one["instr_per_weight"] <= _sass.BUDGET and one["hmma"] > 0


def test_over_budget_or_no_hmma_is_reported(rows) -> None:
    """The verdicts have teeth: a batch-1 kernel one instruction per weight heavier fails, so does a loop without HMMA."""
    from dataclasses import replace

    script = _script()
    assert script.verdicts(rows) == []
    heavy = [replace(r, loop_instructions=r.loop_instructions + r.weights_per_iteration) if r.kernel == "int4_lut_m8"
             else r for r in rows]
    assert any("int4_lut_m8 sm_90" in line and "> 2.5" in line for line in script.verdicts(heavy))
    scalar = [replace(r, hmma=0) if r.kernel == "int4_affine_m32" else r for r in rows]
    assert any("int4_affine_m32" in line and "no HMMA" in line for line in script.verdicts(scalar))


def _insns(*texts: str) -> list[_sass.Insn]:
    return [_sass.Insn(16 * i, t) for i, t in enumerate(texts)]


def test_loop_finder_rules() -> None:
    """Longest backward-branch loop without other control flow; a loop with an inner branch is refused."""
    two = _insns("MOV R1, RZ", "IADD3 R1, R1, 0x1, RZ", "@P0 BRA 0x10",            # small loop 0x10..0x20
                 "LOP3.LUT R2, R1, 0xf, RZ, 0xc0, !PT", "HMMA.16816.F32 R4, R8, R12, R4", "FFMA R3, R3, R2, R3",
                 "@!P1 BRA 0x30", "EXIT")                                              # big loop 0x30..0x60
    assert _sass.hot_loop(two) == (3, 6)
    inner = _insns("IADD3 R1, R1, 0x1, RZ", "@P2 BRA 0x30", "MOV R2, R1", "HMMA.16816.F32 R4, R8, R12, R4",
                   "@!P1 BRA 0x0", "EXIT")
    with pytest.raises(ValueError, match="no branch-free loop"):
        _sass.hot_loop(inner)
    sm80 = _insns("LDS R1, [R2]", "BRA.CONV ~URZ, 0x40", "MOV R3, 0x0", "CALL.REL.NOINC 0x90",
                  "HMMA.16816.F32 R4, R8, R12, R4", "@P4 CALL.REL.NOINC 0x80", "BRA 0x0", "EXIT", "RET.REL.NODEC R2 0x0")
    assert _sass.hot_loop(sm80) == (0, 6)
    assert [i.opcode for i in _insns("@!PT LDS RZ, [RZ]", "HMMA.16816.F32 R4, R8, R12, R4")] == ["LDS", "HMMA"]
