"""Benchmark ``mcard publish`` against ``hf upload`` on the loopback Hub (write API + olah), and reruns.

What it does:

1. Writes quantizer outputs for a multi-branch GPTQ repo (``--branches``
   branches, about ``--size-mb`` MB in all): AutoGPTQ's layout with random
   packed weights (sym v1 zeros, ``g_idx = k // g``), so every branch passes
   ``validate``; and a registry entry for them.
2. Starts the loopback Hub in-process (:class:`mcard.testing.hub.LocalHub`),
   which counts the bytes it receives (LFS uploads, commit bodies).
3. ``mcard package`` (timed), then ``mcard publish --packaged --create``
   (timed) to one repo, and ``hf upload REPO <branch folder> . --revision
   <branch>`` of the same package folders, one call per branch, to another repo
   on the same server (timed; ``hf upload`` needs folders assembled by hand,
   ``mcard package`` is what assembles them). Both as subprocesses, without
   progress bars, ``HF_HUB_DISABLE_XET=1`` (the test Hub speaks LFS).
4. Republish unchanged (both tools): time and bytes received by the server.
5. One branch re-quantized (new weights), re-packaged, republished: bytes
   received vs the size of that branch's changed files.

Steps 3-5 run ``--repeats`` times on fresh repos, alternating which tool goes
first; the results give every run and the medians.

Usage::

    python benchmarks/bench_publish.py --size-mb 1000 --branches 4 --repeats 3 --out benchmarks/RESULTS_publish.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import describe

from mcard.core.arch import ModelShape, tiny_config
from mcard.core.safetensors_io import write
from mcard.formats import common as _common
from mcard.formats.gptq import config as _gptq_config
from mcard.testing.hub import LocalHub

REPO, HF_REPO = "bench/Bench-GPTQ", "bench/Bench-GPTQ-hf-upload"
TOKEN = "bench-token"
GROUPS = (128, 64, 32, -1, 256, 512)  # one branch per group size (4-bit, no act-order)
HF = str(Path(sys.executable).with_name("hf"))


def _config(size_mb: int, branches: int) -> dict[str, Any]:
    """A llama shape whose 4-bit checkpoint is about size_mb / branches MB."""
    per = size_mb * 1e6 / branches
    cfg = tiny_config(hidden_size=2048, intermediate_size=5632, num_attention_heads=16, num_key_value_heads=16,
                      vocab_size=8000, num_hidden_layers=1)
    layer = 27.0e6  # 4-bit linears + scales + bias of one layer of this shape, bytes
    fixed = 8000 * 2048 * 2 * 2  # embeddings and lm_head, fp16
    cfg["num_hidden_layers"] = max(1, round((per - fixed) / layer))
    return cfg


def write_gptq(folder: Path, cfg: dict[str, Any], group: int, seed: int) -> None:
    """AutoGPTQ's files with random packed 4-bit weights: valid layout, no quantization run."""
    shape = ModelShape.from_config(cfg)
    rng = np.random.default_rng(seed)
    tensors = _common.random_fp_tensors(shape, rng)
    for lin in shape.linears():
        k, n = lin.in_features, lin.out_features
        g = k if group == -1 else group
        groups = -(-k // g)
        tensors[f"{lin.name}.qweight"] = rng.integers(-2**31, 2**31, (k // 8, n), dtype=np.int64).astype(np.int32)
        tensors[f"{lin.name}.qzeros"] = np.full((groups, n // 8), 0x77777777, np.int32)
        tensors[f"{lin.name}.scales"] = (rng.random((groups, n), np.float32) * 0.01 + 0.001).astype(np.float16)
        tensors[f"{lin.name}.g_idx"] = (np.arange(k) // g).astype(np.int32)
        tensors[f"{lin.name}.bias"] = np.zeros(n, np.float16)
    folder.mkdir(parents=True, exist_ok=True)
    qc = _gptq_config.make_config(4, group, False, True, "gptq", "quantize_config.json")
    _common.write_config(folder, "quantize_config.json", qc)
    _common.write_config(folder, "config.json", dict(cfg, torch_dtype="float16"))
    write(folder / f"gptq_model-4bit-{group}g.safetensors", tensors, {"format": "pt"})


def branch_name(group: int) -> str:
    return "main" if group == GROUPS[0] else f"gptq-4bit-{group}g-actorder_False"


def write_entry(path: Path, cfg: dict[str, Any], groups: tuple[int, ...]) -> None:
    arch = "".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items() if not isinstance(v, (dict, list)))
    variants = "".join(f'[[variants]]\nbranch = "{branch_name(g)}"\nformat = "gptq"\nbits = 4\ngroup_size = {g}\n\n'
                       for g in groups)
    path.write_text(f'[model]\nrepo = "{REPO}"\nname = "Bench GPTQ"\nlicense = "apache-2.0"\n'
                    f'base_model = "bench/base"\n\n[architecture]\n{arch}\n{variants}')


def run(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def received(hub: LocalHub) -> int:
    return hub.stats.lfs_total + hub.stats.commit_body_bytes



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1000)
    parser.add_argument("--branches", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write the results (Markdown) here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    groups = GROUPS[:args.branches]

    work = args.keep or Path(tempfile.mkdtemp(prefix="mcard-bench-publish-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = _config(args.size_mb, args.branches)
    for i, g in enumerate(groups):
        write_gptq(work / "from" / branch_name(g), cfg, g, seed=i)
    entry = work / "entry.toml"
    write_entry(entry, cfg, groups)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    times: dict[str, list[float]] = {k: [] for k in ("mcard", "hf", "mcard2", "hf2", "mcard3", "pack2")}
    sent: dict[str, list[int]] = {k: [] for k in ("mcard", "hf", "mcard2", "hf2", "mcard3", "lfs3", "weights3")}
    commits: dict[str, list[int]] = {"mcard2": [], "hf2": [], "mcard3": []}
    load = [os.getloadavg()[0]]
    changed = branch_name(groups[1])
    try:
        with LocalHub(work / "hub", TOKEN) as hub:
            env.update(HF_ENDPOINT=hub.endpoint, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1",
                       HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HOME=str(work / "hf-home"))
            mcard = [sys.executable, "-m", "mcard.cli"]
            pkg = work / "package"
            t_pack = run([*mcard, "package", str(entry), "--from", str(work / "from"), "--out", str(pkg)], env)
            total = sum(p.stat().st_size for p in pkg.rglob("*") if p.is_file() and p.name != "mcard-package.json")
            for r in range(args.repeats):
                repo, hf_repo = f"{REPO}-{r}", f"{HF_REPO}-{r}"
                publish = [*mcard, "publish", str(entry), "--packaged", str(pkg), "--repo", repo]
                uploads = [[HF, "upload", hf_repo, str(pkg / branch_name(g)), ".", "--revision", branch_name(g),
                            "--quiet"] for g in groups]

                def measure(key: str, cmds: list[list[str]]) -> None:
                    hub.stats.clear()
                    times[key].append(sum(run(c, env) for c in cmds))
                    sent[key].append(received(hub))
                    if key in commits:
                        commits[key].append(len(hub.stats.commits))

                first = [("mcard", [[*publish, "--create"]]), ("hf", uploads)]
                for key, cmds in (first if r % 2 == 0 else first[::-1]):  # alternate which goes first
                    measure(key, cmds)
                again = [("mcard2", [publish]), ("hf2", uploads)]
                for key, cmds in (again if r % 2 == 0 else again[::-1]):
                    measure(key, cmds)

                shutil.rmtree(work / "from" / changed)
                write_gptq(work / "from" / changed, cfg, groups[1], seed=1000 + r)
                times["pack2"].append(run([*mcard, "package", str(entry), "--from", str(work / "from"),
                                           "--out", str(pkg)], env))
                manifest = json.loads((pkg / "mcard-package.json").read_text())
                sent["weights3"].append(next(f["size"] for b in manifest["branches"] if b["branch"] == changed
                                             for f in b["files"] if f["path"] == "model.safetensors"))
                measure("mcard3", [publish])
                sent["lfs3"].append(hub.stats.lfs_total)
                load.append(os.getloadavg()[0])
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(times[key])

    def runs(key: str) -> str:
        return ", ".join(f"{t:.1f}" for t in times[key])

    rows = [
        ("first publish (new repo)", f"{runs('mcard')} s (median {med('mcard'):.1f}); {sent['mcard'][0] / 1e6:.1f} MB",
         f"{runs('hf')} s (median {med('hf'):.1f}); {sent['hf'][0] / 1e6:.1f} MB", f"{med('mcard') / med('hf'):.2f}"),
        ("republish unchanged", f"{runs('mcard2')} s (median {med('mcard2'):.1f}); {max(sent['mcard2']):,} B; "
         f"{max(commits['mcard2'])} commits", f"{runs('hf2')} s (median {med('hf2'):.1f}); {max(sent['hf2']):,} B; "
         f"{max(commits['hf2'])} commits", f"{med('mcard2') / med('hf2'):.2f}"),
        (f"after re-quantizing `{changed}`", f"{runs('mcard3')} s (median {med('mcard3'):.1f}); "
         + "; ".join(f"{b:,} B (weights file {w:,} B)" for b, w in zip(sent["mcard3"], sent["weights3"], strict=True))
         + f"; commits {commits['mcard3']}", "-", "-"),
    ]
    extra = [b - w for b, w in zip(sent["mcard3"], sent["weights3"], strict=True)]
    lfs_only = all(lfs == w for lfs, w in zip(sent["lfs3"], sent["weights3"], strict=True))

    lines = [
        "# `mcard publish` benchmark", "",
        f"Machine: {describe(packages=('huggingface_hub',), commands=(['git', '--version'],))}.", "",
        "Command (from the repo root, in the project venv):", "",
        f"    python benchmarks/bench_publish.py --size-mb {args.size_mb} --branches {args.branches} "
        f"--repeats {args.repeats}"
        + (f" --out {args.out}" if args.out else ""), "",
        f"Package: {len(groups)} GPTQ branches ({', '.join(branch_name(g) for g in groups)}), "
        f"{total / 1e6:.1f} MB in all ({cfg['num_hidden_layers']} layers of a 2048-wide llama, 4-bit). "
        f"`mcard package` took {t_pack:.1f} s (hard-links the weights, hashes every file, validates each "
        f"variant before and after); re-packaging after each change took {', '.join(f'{t:.1f}' for t in times['pack2'])} s.",
        "", f"Load average (1 min) during the run: {', '.join(f'{x:.1f}' for x in load)} (other jobs shared the "
        "2 cores; compare medians and ratios, not single runs).", "",
        "Both tools publish the same package folders to the loopback Hub (mcard's write API + olah, one "
        "process on this machine), as subprocesses, LFS transfers (`HF_HUB_DISABLE_XET=1`), no progress "
        "bars. Bytes are counted by the server (LFS uploads + commit bodies). `hf upload` is run once per "
        "branch (`hf upload REPO FOLDER . --revision BRANCH`); mcard publishes every branch in one call and "
        "then reads each branch's listing back to verify it.", "",
        "| step | `mcard publish` | `hf upload` (per branch) | time ratio mcard/hf |", "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows], "",
        f"Counting packaging: `mcard package` + first `mcard publish` = {t_pack + med('mcard'):.1f} s against "
        f"{med('hf'):.1f} s for `hf upload` of folders assembled beforehand. `hf upload` computes every file's "
        "sha256 on each run; `mcard publish` takes them from the package manifest (trusted while a file's size, "
        "mtime and inode are unchanged, else re-hashed), so the hashing is done once, by `mcard package`.", "",
        f"After the change, the server received exactly the changed branch's new weights file through LFS: "
        f"{'yes' if lfs_only else 'NO'}; besides it, {', '.join(f'{x:,}' for x in extra)} bytes of commit "
        "body (the NDJSON commit naming the new LFS object). Each repeat publishes to a fresh pair of repos; "
        "the order of the two tools alternates.", "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
