"""What mcard needs at run time (card templates, kernel sources) travels as package data (#11).

The wheel is built from this checkout and installed with ``pip install --target`` into an empty
folder; from there, in a fresh interpreter whose first path entry is that folder, a card renders
and a kernel source is looked up, each from the installed copy (not this checkout).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

PROBE = """
import json, sys
from pathlib import Path
import cupy_kernels, mcard
from cupy_kernels import launch
from mcard.card import render
from mcard.cli import app, main

entry = Path(sys.argv[1])
card = render.render_card(entry)
print(json.dumps({
    "mcard": mcard.__file__, "cupy_kernels": cupy_kernels.__file__,
    "templates": str(render.templates()), "names": sorted(p.name for p in render.templates().iterdir()),
    "source": str(cupy_kernels.source("int4")), "source_text": launch.source_text("int4"),
    "card": card, "api": hasattr(mcard.api, "inspect"),
}))
"""


def test_wheel_installed_with_target_renders_a_card_and_finds_the_kernels(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True, text=True, cwd=tmp_path)
    target = tmp_path / "site"
    [wheel] = wheels.glob("mcard-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    entry = ROOT / "registry" / "llama-2-13b-chat-gptq.toml"
    run = subprocess.run([sys.executable, "-c", PROBE, str(entry)], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    for key in ("mcard", "cupy_kernels", "templates", "source"):  # the installed copy, not the checkout
        assert Path(got[key]).resolve().is_relative_to(target.resolve()), (key, got[key])
    assert {"gptq.md.j2", "gguf.md.j2", "hf.md.j2", "_header.md.j2"} <= set(got["names"])
    assert got["source"].endswith("int4.cu") and '#include "' not in got["source_text"]
    assert (ROOT / "cupy_kernels" / "ptx.cuh").read_text().splitlines()[-1] in got["source_text"]
    assert got["card"].startswith("---\n") and "| Branch | Bits | Group Size |" in got["card"] and got["api"]
