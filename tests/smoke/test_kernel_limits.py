"""One answer to "does an int4 kernel serve this layer?": cupy_kernels.limits, asked by the
packers, by ``mcard smoke`` per layer and by ``mcard plan`` per registry variant."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cupy_kernels import limits, pack
from mcard.pipeline.plan import plan_jobs

AWQ_GROUPS = {16: False, 48: False, 64: True, -1: True}  # group size -> served (multiples of 32, or one group)


def test_packers_refuse_what_the_limits_refuse() -> None:
    k, n = 256, 32
    for g, served in AWQ_GROUPS.items():
        groups = 1 if g == -1 else -(-k // g)
        args = (np.zeros((k, n // 8), np.int32), np.zeros((groups, n // 8), np.int32),
                np.ones((groups, n), np.float16), g)
        why = limits.why_not_awq("gemm", g, n, k)
        assert (why == "") is served, (g, why)
        if served:
            assert pack.pack_awq(*args, xp=np).n == n
        else:
            assert why == f"no kernel for AWQ group size {g} (not a multiple of 32)"
            with pytest.raises(ValueError, match=f"^{re.escape(why)}$"):
                pack.pack_awq(*args, xp=np)
    # a group of 48 is served when it spans all of K
    assert limits.why_not_awq("gemm", 48, n, 48) == ""
    for bs, served in ((16, False), (32, True), (64, True)):
        args = (np.zeros(k * n // 2, np.uint8), np.linspace(-1, 1, 16).astype(np.float32),
                np.ones(-(-k * n // bs), np.float32), (n, k), bs)
        assert (limits.why_not_bnb(bs, k) == "") is served
        if served:
            assert pack.pack_bnb(*args, xp=np).kind == "lut"
        else:
            with pytest.raises(ValueError, match="blocksize 16"):
                pack.pack_bnb(*args, xp=np)
    assert set(pack.GGUF_BLOCKS) == {"Q4_0", "Q4_1", "Q4_K"} and limits.why_not_gguf("Q8_0")
    with pytest.raises(ValueError, match="no kernel for GGUF Q8_0"):
        pack.pack_gguf(np.zeros((8, 34), np.uint8), "Q8_0", (8, 32), xp=np)


def test_plan_and_smoke_agree_on_awq_group_sizes(tmp_path: Path) -> None:
    """A registry AWQ variant goes to a GPU runner exactly when smoke would run a kernel on its layers."""
    pytest.importorskip("torch")
    from mcard.core.arch import tiny_config
    from mcard.formats import awq
    from mcard.smoke import run as smoke

    reg = tmp_path / "registry"
    reg.mkdir()
    text = '[model]\nrepo = "org/m-awq"\nname = "M"\nlicense = "apache-2.0"\nbase_model = "org/m"\n\n'
    for g in AWQ_GROUPS:
        text += f'[[variants]]\nbranch = "g{g}"\nformat = "awq"\nbits = 4\ngroup_size = {g}\n\n'
    text += '[[variants]]\nbranch = "gemv"\nformat = "awq"\nbits = 4\ngroup_size = 64\nversion = "gemv"\n\n'
    (reg / "m.toml").write_text(text)
    gpu = {job["variant"]: job["gpu"] for job in plan_jobs(reg)}
    assert gpu == {**{f"g{g}": served for g, served in AWQ_GROUPS.items()}, "gemv": False}

    for g in (16, 64):
        folder = tmp_path / f"awq-g{g}"
        awq.write_variant(folder, tiny_config(), group_size=g)
        result = smoke.run(folder, device="cpu", layers="2", batches="1", seed=1)
        assert result.ok and result.layers
        notes = {layer.note for layer in result.layers}
        if gpu[f"g{g}"]:
            assert not any("no kernel" in note for note in notes), notes
        else:
            assert notes == {f"no kernel for AWQ group size {g} (not a multiple of 32)"}
            assert f"no kernel for AWQ group size {g} (not a multiple of 32) (reference check only)" in result.message
