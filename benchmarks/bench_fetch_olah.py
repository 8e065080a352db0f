"""Benchmark `mcard fetch` against `hf download` on the same olah server (olah serves the bytes itself,
no Range), and measure resume.

What it does:

1. Builds one multi-branch GPTQ-style repo whose measured branch holds
   ``--size-mb`` MB of LFS safetensors shards (plus small config files; the
   other branches are small), and serves it with olah (offline mirror mode)
   on loopback.
2. Times ``mcard fetch REPO:BRANCH`` and ``hf download REPO --revision
   BRANCH`` into fresh cache folders, alternating which goes first, and
   reports the medians and their ratio. Both run as subprocesses with the
   same worker count (8) and print nothing.
3. Resume: runs ``mcard fetch`` through the Range-capable fault proxy
   (tests/tools/faultproxy.py), kills it (SIGKILL) once about half the bytes have
   arrived, runs it again and counts the bytes the proxy sends in the second
   run that had already arrived in the first (goal: < 1 %). The same is done
   for ``hf download`` for comparison.

Usage::

    python benchmarks/bench_fetch_olah.py --size-mb 200 --repeats 3 --out benchmarks/RESULTS_fetch_olah.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "tools"))

from faultproxy import FaultProxy, Faults
from machine import describe

from mcard.testing.hubserver import OlahServer, build_git_repo, safetensors_bytes, sample_gptq_branches

REPO = "bench/Bench-GPTQ"
BRANCH = "gptq-4bit-32g-actorder_True"
MCARD = ("import typer; from mcard.cli import hub as cli_hub; app = typer.Typer(); "
         "app.command('branches')(cli_hub.branches); app.command('fetch')(cli_hub.fetch); app()")
HF = str(Path(sys.executable).with_name("hf"))


def _build(mirrors: Path, scratch: Path, size_mb: int, shards: int) -> int:
    """Write the repo; return the total bytes of the measured branch."""
    files: dict[str, bytes | Path] = {}
    per = size_mb * 1_000_000 // shards
    for i in range(shards):
        shard = scratch / f"shard{i}.safetensors"
        shard.write_bytes(safetensors_bytes(per, seed=100 + i, name=f"w{i}"))
        files[f"model-{i + 1:05d}-of-{shards:05d}.safetensors"] = shard
    small = sample_gptq_branches(8 * 1024)
    for name in ("config.json", "quantize_config.json", "tokenizer_config.json", "README.md"):
        files[name] = small[BRANCH][name]
    branches = {"main": small["main"], BRANCH: files,
                "gptq-8bit-128g-actorder_False": small["gptq-8bit-128g-actorder_False"]}
    built = build_git_repo(mirrors, REPO, branches)
    return sum(info.size for info in built.files[BRANCH].values())


def _env(endpoint: str, cache: Path) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    return env


def _mcard_cmd(cache: Path) -> list[str]:
    return [sys.executable, "-c", MCARD, "fetch", f"{REPO}:{BRANCH}", "--quiet", "--cache-dir", str(cache)]


def _hf_cmd(cache: Path) -> list[str]:
    return [HF, "download", REPO, "--revision", BRANCH, "--cache-dir", str(cache), "--quiet"]


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed


def _on_disk(cache: Path) -> int:
    """Bytes of the repo's blobs folder: finished blobs plus partial downloads."""
    blobs = cache / ("models--" + REPO.replace("/", "--")) / "blobs"
    return sum(p.stat().st_size for p in blobs.iterdir() if p.is_file()) if blobs.is_dir() else 0


def _resume(cmd_for: Any, proxy: FaultProxy, work: Path, total: int, label: str) -> dict[str, float]:
    """Kill the tool (SIGKILL) at about half, rerun, count bytes that are sent again."""
    cache = work / f"resume-{label}"
    # ~3 MB/s per connection: as on a real network, the client is not the bottleneck, so little
    # sits in socket buffers when the process is killed
    proxy.set_faults(Faults(honour_range=True, chunk_delay=0.02))
    proxy.clear_log()
    proc = subprocess.Popen(cmd_for(cache), env=_env(proxy.endpoint, cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and _on_disk(cache) < total // 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    arrived = _on_disk(cache)
    first = proxy.bytes_sent("/resolve/")
    proxy.set_faults(Faults(honour_range=True))
    proxy.clear_log()
    _timed(cmd_for(cache), _env(proxy.endpoint, cache))
    sent = proxy.bytes_sent("/resolve/")
    retransferred = max(0, sent - (total - arrived))
    # network view: everything the proxy wrote in both runs beyond one copy of the revision; this also
    # counts bytes that were in flight (socket buffers, the client's last unwritten batch) at the kill
    overhead = max(0, first + sent - total)
    return {"arrived": arrived, "sent_first_run": first, "sent_second_run": sent, "retransferred": retransferred,
            "ratio": retransferred / arrived if arrived else 0.0, "overhead": overhead,
            "overhead_ratio": overhead / first if first else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200, help="MB of LFS weights on the measured branch")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mcard-bench-"))
    try:
        scratch = work / "scratch"
        scratch.mkdir()
        total = _build(work / "mirrors", scratch, args.size_mb, args.shards)
        shutil.rmtree(scratch)
        times: dict[str, list[float]] = {"mcard": [], "hf": []}
        with OlahServer(work / "mirrors") as hub:
            for i in range(args.repeats):
                order = ["mcard", "hf"] if i % 2 == 0 else ["hf", "mcard"]
                for tool in order:
                    cache = work / f"{tool}-{i}"
                    cmd = _mcard_cmd(cache) if tool == "mcard" else _hf_cmd(cache)
                    times[tool].append(_timed(cmd, _env(hub.endpoint, cache)))
                    print(f"run {i + 1} {tool}: {times[tool][-1]:.2f} s", flush=True)
                    shutil.rmtree(cache)
            with FaultProxy(hub.endpoint) as proxy:
                mcard_resume = _resume(_mcard_cmd, proxy, work, total, "mcard")
                print(f"mcard resume: {mcard_resume}", flush=True)
                hf_resume = _resume(_hf_cmd, proxy, work, total, "hf")
                print(f"hf resume: {hf_resume}", flush=True)
        report = _report(args, total, times, mcard_resume, hf_resume)
        print(report)
        if args.out:
            args.out.write_text(report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _report(args: argparse.Namespace, total: int, times: dict[str, list[float]], mr: dict[str, float],
            hr: dict[str, float]) -> str:
    m, h = statistics.median(times["mcard"]), statistics.median(times["hf"])
    mb = total / 1e6
    runs = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731 - a one-line formatter for the template
    command = (f"python benchmarks/bench_fetch_olah.py --size-mb {args.size_mb} --shards {args.shards} "
               f"--repeats {args.repeats} --out benchmarks/RESULTS_fetch_olah.md")
    mcard_row = (f"| mcard fetch | {mr['arrived']:,.0f} | {mr['sent_first_run']:,.0f} | {mr['sent_second_run']:,.0f} | "
                 f"{mr['retransferred']:,.0f} | **{100 * mr['ratio']:.3f} %** | {mr['overhead']:,.0f} "
                 f"({100 * mr['overhead_ratio']:.2f} %) |")
    hf_row = (f"| hf download | {hr['arrived']:,.0f} | {hr['sent_first_run']:,.0f} | {hr['sent_second_run']:,.0f} | "
              f"{hr['retransferred']:,.0f} | {100 * hr['ratio']:.1f} % | {hr['overhead']:,.0f} "
              f"({100 * hr['overhead_ratio']:.1f} %) |")
    return f"""# `mcard fetch` benchmark on the olah path (olah serves every byte itself; see RESULTS_fetch.md for the CDN path)

Machine: {describe(packages=('huggingface_hub', 'olah', 'httpx'))}.

Command (from the repo root, in the project venv):

    {command}

Setup: one repo `{REPO}` with three branches served by olah (offline mirror mode) on loopback;
the measured branch `{BRANCH}` holds {args.shards} LFS safetensors shards plus 4 small files,
{mb:.1f} MB in all. Both tools download that revision into a fresh HF cache folder, 8 parallel
workers each, no progress output, as separate processes (start-up included); order alternates.

## Speed (same server, same revision)

| tool | runs (s) | median (s) | MB/s |
|---|---|---|---|
| `mcard fetch {REPO}:{BRANCH}` | {runs(times["mcard"])} | {m:.2f} | {mb / m:.1f} |
| `hf download {REPO} --revision {BRANCH}` | {runs(times["hf"])} | {h:.2f} | {mb / h:.1f} |

Ratio mcard / hf: **{m / h:.2f}** (below 1 means mcard is faster). mcard hashes every byte while it
streams (sha256, git blob id) and needs no per-file HEAD; `hf download` sends a HEAD per file,
which olah answers for LFS files by reading and hashing the whole object. Both are bound by the
server: olah streams a file in 4 KiB pieces through a thread pool in one Python process (about one
core of the two), and single runs vary by 10-20 % on this box, so compare medians.

## Resume after an interruption (through the Range-capable fault proxy)

The proxy serves ~3 MB/s per connection (64 KiB every 20 ms). The process is killed with SIGKILL
once about half the bytes are on disk, then run again without throttling.
"Re-transferred" counts bytes sent in the second run that were already on disk after the first.
"Network overhead" is everything the proxy sent in both runs beyond one copy of the revision,
relative to what it sent in the first run; it also counts bytes still in flight at the kill
(kernel socket buffers, the client's last unwritten 64 KiB batch per file).

| tool | on disk at kill | sent 1st run | sent 2nd run | re-transferred | share of what had arrived | network overhead |
|---|---|---|---|---|---|---|
{mcard_row}
{hf_row}

mcard keeps `blobs/<sha256>.incomplete`, re-hashes its bytes and continues with `Range`
(accepted only on 206 with a matching Content-Range). huggingface_hub {_hf_version()} writes
each download to a process-unique temporary file and deletes it on failure, so an interrupted
file starts over (finished files are kept).
"""


def _hf_version() -> str:
    import huggingface_hub

    return huggingface_hub.__version__


if __name__ == "__main__":
    main()
