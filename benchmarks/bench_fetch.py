"""Benchmark `mcard fetch` on the Hub's download path (a 302 to a CDN) against `hf download` and `aria2c`.

What it does, in one run, on one machine, against one server (all on loopback):

1. Builds `bench/Bench-GGUF`, whose `main` holds one LFS file of `--size-gb` GB, and
   `bench/Bench-GPTQ`, whose branch `gptq-4bit-32g-actorder_True` holds 4 safetensors shards of
   the same total size plus 4 small files, and serves both with `mcard.testing.cdn.CdnHub`: olah
   for the API, the front that answers `/resolve/` of an LFS file with the Hub's 302, and nginx
   (Debian) as the CDN, with a rate limit per connection.
2. For each rate (`--rates`: 25 MB/s per connection, and unlimited) and each case, times
   `mcard fetch`, `hf download` (huggingface_hub's CLI; one connection per file) and
   `aria2c -x 8 -s 8` (Debian; on the CDN URLs the front resolves to, with
   `--checksum=sha-256=...`), order rotating, each into a fresh folder, as separate processes
   (start-up included). mcard and aria2c verify the sha256 themselves; `hf download` checks the
   size only, so its output is hashed afterwards (untimed). `aria2c -x 1 -s 1 -j 1` (`aria2c-x1`) is
   the single-connection client of the ">= 5x" goal.
3. Resume: starts each tool on the single file at the first rate, kills it (SIGKILL) once half of
   the bytes are written (`/proc/<pid>/io`), runs it again, and counts from nginx's log the bytes
   the second run was sent beyond what was still missing ("re-sent"; goal: < 1 % of the bytes
   written before the kill).

Needs nginx (`apt-get install nginx-light`) and aria2c (`apt-get install aria2`), about
4 x `--size-gb` GB in the temporary folder, and ~30 minutes at 2 GB with 3 repeats.

Usage::

    python benchmarks/bench_fetch.py --size-gb 2 --repeats 3 --out benchmarks/RESULTS_fetch.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import describe

from mcard.testing.cdn import CdnHub
from mcard.testing.hubserver import build_git_repo

BIN = Path(sys.executable).parent
MB = 1_000_000
TOOLS = ("mcard", "hf", "aria2c", "aria2c-nocheck", "aria2c-x1")


@dataclass
class Case:
    """One thing to download: repo, revision and its LFS files (path, size, sha256)."""

    name: str
    repo: str
    revision: str
    files: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(size for _, size, _ in self.files)


def _random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 64 << 20)
            fh.write(os.urandom(n))
            left -= n
    return path


def _build(mirrors: Path, scratch: Path, total: int) -> list[Case]:
    single = Case("one file", "bench/Bench-GGUF", "main")
    built = build_git_repo(mirrors, single.repo, {"main": {
        "model.Q4_K_M.gguf": _random_file(scratch / "one.gguf", total), "README.md": b"# bench\n"}})
    (scratch / "one.gguf").unlink()
    shards = Case("4 shards", "bench/Bench-GPTQ", "gptq-4bit-32g-actorder_True")
    files: dict[str, bytes | Path] = {name: b'{"bits": 4}\n' for name in
                                      ("config.json", "quantize_config.json", "tokenizer_config.json", "README.md")}
    for i in range(4):
        files[f"model-{i + 1:05d}-of-00004.safetensors"] = _random_file(scratch / f"s{i}", total // 4)
    sharded = build_git_repo(mirrors, shards.repo, {"main": {"README.md": b"# bench\n"}, shards.revision: files})
    for i in range(4):
        (scratch / f"s{i}").unlink()
    for case, repo in ((single, built), (shards, sharded)):
        case.files = [(p, f.size, f.sha256) for p, f in sorted(repo.files[case.revision].items()) if f.lfs]
    return [single, shards]


def _env(endpoint: str) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_XET": "1"}
    for var in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HF_HOME"):
        env.pop(var, None)
    return env


def _command(tool: str, case: Case, out: Path, hub: CdnHub, extra: list[str] | None = None) -> list[str]:
    if tool == "mcard":
        return [str(BIN / "mcard"), "fetch", f"{case.repo}:{case.revision}", "--quiet", "--cache-dir", str(out),
                *(extra or [])]
    if tool == "hf":
        return [str(BIN / "hf"), "download", case.repo, "--revision", case.revision, "--cache-dir", str(out), "--quiet"]
    import httpx

    listing = out.with_name(out.name + ".aria2-input")
    lines = []
    for path, _size, sha in case.files:  # the CDN URL the Hub's redirect points to, as a user would paste it
        location = httpx.head(hub.resolve_url(case.repo, case.revision, path)).headers["location"]
        lines += [location, f"  out={path}", f"  checksum=sha-256={sha}"]
    listing.write_text("\n".join(lines) + "\n")
    if tool == "aria2c-nocheck":  # the same download without the sha256 pass, to show what that pass costs
        listing.write_text("\n".join(line for line in lines if "checksum=" not in line) + "\n")
    # aria2c-x1: the single-connection client (one connection, one file at a time), sha256 checked
    n = "1" if tool == "aria2c-x1" else "8"
    return ["aria2c", "-x", n, "-s", n, "-j", n, "-i", str(listing), "-d", str(out), "--console-log-level=warn",
            "--summary-interval=0", "--allow-overwrite=true", "--auto-file-renaming=false", "-q"]


def _run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process) of one run; exits on failure."""
    with open(log, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {log.read_text(errors='replace')[-600:]}")
    return elapsed, usage.ru_utime + usage.ru_stime


def _check(tool: str, case: Case, out: Path) -> None:
    """Every file of the case is in ``out`` with its size (and, for hf, which does not hash, its sha256)."""
    for path, size, sha in case.files:
        found = [out / path] if tool.startswith("aria2c") else list(out.rglob(Path(path).name))
        real = [p for p in found if p.is_file() and p.stat().st_size == size]
        if not real:
            raise SystemExit(f"{tool}: {path} missing or of the wrong size in {out}")
        if tool in ("hf", "aria2c-nocheck") and _sha256(real[0]) != sha:
            raise SystemExit(f"{tool}: {path} has the wrong sha256")


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _speed(hub: CdnHub, cases: list[Case], rates: list[int], tools: list[str], repeats: int,
           work: Path) -> dict[tuple[str, int, str], list[tuple[float, float]]]:
    times: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    env = _env(hub.endpoint)
    for rate in rates:
        hub.front.cdn_rate = rate
        for case in cases:
            for i in range(repeats):
                order = tools[i % len(tools):] + tools[:i % len(tools)]
                for tool in order:
                    out = work / f"out-{tool}"
                    shutil.rmtree(out, ignore_errors=True)
                    cmd = _command(tool, case, out, hub)
                    took = _run(cmd, env, work / "stderr.log")
                    _check(tool, case, out)
                    shutil.rmtree(out, ignore_errors=True)
                    times.setdefault((case.name, rate, tool), []).append(took)
                    print(f"{case.name}, {_rate(rate)}: {tool} {took[0]:.2f} s "
                          f"({case.size / took[0] / MB:.0f} MB/s, CPU {took[1]:.1f} s)", flush=True)
    return times


def _written(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _resume(hub: CdnHub, case: Case, rate: int, tool: str, work: Path) -> dict[str, float]:
    """Kill ``tool`` (SIGKILL) once half the file is written, run it again, count what nginx sent again."""
    hub.front.cdn_rate = rate
    env, out = _env(hub.endpoint), work / f"resume-{tool}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = _command(tool, case, out, hub)
    (_path, size, sha) = case.files[0]
    first_start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 1800
    while proc.poll() is None and _written(proc.pid) < size // 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    written = _written(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)  # nginx logs a request when it notices the client is gone
    second_start = time.time()
    took = _run(cmd, env, work / "stderr.log")
    _check(tool, case, out)
    shutil.rmtree(out, ignore_errors=True)
    gets = hub.cdn.requests(until=lambda reqs: sum(r.sent for r in reqs if r.start >= second_start and
                                                     r.path.endswith(sha)) >= size - written, timeout=5)
    sent1 = sum(r.sent for r in gets if first_start <= r.start < second_start and r.path.endswith(sha))
    sent2 = sum(r.sent for r in gets if r.start >= second_start and r.path.endswith(sha))
    resent = max(0, sent2 - (size - written))
    return {"written": written, "sent1": sent1, "sent2": sent2, "resent": resent,
            "ratio": resent / written if written else 0.0, "seconds": took[0]}


def _rate(rate: int) -> str:
    return f"{rate / MB:g} MB/s per connection" if rate else "unlimited"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.0, help="GB of the single file, and of the 4 shards")
    parser.add_argument("--rates", default="25,0", help="CDN MB/s per connection, comma-separated (0: unlimited)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    args = parser.parse_args()
    rates = [int(float(r) * MB) for r in args.rates.split(",")]
    tools = [t for t in args.tools.split(",") if t]
    work = Path(tempfile.mkdtemp(prefix="mcard-bench-cdn-"))
    try:
        scratch = work / "scratch"
        scratch.mkdir()
        cases = _build(work / "mirrors", scratch, int(args.size_gb * 1e9))
        with CdnHub(work / "mirrors") as hub:
            times = _speed(hub, cases, rates, tools, args.repeats, work)
            resumes = {} if args.no_resume else {tool: _resume(hub, cases[0], rates[0], tool, work)
                                                 for tool in tools if tool in ("mcard", "hf", "aria2c")}
            for tool, r in resumes.items():
                print(f"resume {tool}: {r}", flush=True)
        report = _report(args, cases, rates, tools, times, resumes)
        print(report)
        if args.out:
            args.out.write_text(report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _report(args: argparse.Namespace, cases: list[Case], rates: list[int], tools: list[str],
            times: dict[tuple[str, int, str], list[tuple[float, float]]], resumes: dict[str, dict[str, float]]) -> str:
    rows, goals = [], []
    for rate in rates:
        for case in cases:
            med = {t: statistics.median(x[0] for x in times[(case.name, rate, t)]) for t in tools}
            cpu = {t: statistics.median(x[1] for x in times[(case.name, rate, t)]) for t in tools}
            for tool in tools:
                runs = ", ".join(f"{x[0]:.2f}" for x in times[(case.name, rate, tool)])
                ratio = {t: med[t] / med[tool] for t in tools}
                rows.append(f"| {case.name} | {_rate(rate)} | {tool} | {runs} | {med[tool]:.2f} | "
                            f"{case.size / med[tool] / MB:.0f} | {cpu[tool]:.1f} | "
                            + " | ".join(f"{ratio[t]:.2f}" for t in tools) + " |")
            if "mcard" in tools:
                goals += _goals(case, rate, med, tools)
    res = [f"| {tool} | {r['written']:,.0f} | {r['sent1']:,.0f} | {r['sent2']:,.0f} | {r['resent']:,.0f} | "
           f"**{100 * r['ratio']:.2f} %** | {r['seconds']:.1f} |" for tool, r in resumes.items()]
    header = " | ".join(f"x {t}" for t in tools)
    command = (f"python benchmarks/bench_fetch.py --size-gb {args.size_gb:g} --rates {args.rates} "
               f"--repeats {args.repeats} --out benchmarks/RESULTS_fetch.md")
    return f"""# `mcard fetch` on the Hub's download path: a 302 to a CDN

Machine: {describe(packages=('httpx', 'huggingface_hub'), commands=(['nginx', '-v'], ['aria2c', '--version']))}.

Command (from the repo root, in the project venv):

    {command}

Setup: `mcard.testing.cdn.CdnHub` on loopback: olah answers the API, the front answers `/resolve/` of
an LFS file with the Hub's 302 (signed, expiring `Location`, `X-Linked-Size`, `X-Linked-Etag`), nginx
serves the LFS objects with Range and `limit_rate` per connection (its log counts the bytes). Cases:
one {cases[0].size / 1e9:g} GB LFS file (`{cases[0].repo}`), and a branch of 4 LFS shards of
{cases[1].size / 4e9:g} GB each plus 4 small files (`{cases[1].repo}:{cases[1].revision}`). Each tool
runs as its own process into a fresh folder, order rotating; times include start-up, listing and
resolving (aria2c gets the resolved CDN URLs, so it skips those). `mcard fetch` runs with its
defaults (8 files at a time; connections per file from the size: 8 for each file here) and verifies
sha256 while downloading; `aria2c -x 8 -s 8 -j 8` verifies with `--checksum=sha-256=...` after
downloading (a second read of the file); `aria2c-nocheck` is the same download without that pass
(hashed after the run, untimed), to show what the pass costs; `aria2c-x1` (`-x 1 -s 1 -j 1`, with the
checksum) is the single-connection client the 5x goal is measured against; `hf download` (8 files at a time, one
connection each) checks sizes only: its output is hashed after the run, untimed. "CPU" is the
process's user + system time as the kernel accounts it (the machine is shared, so it varies too).

## Speed

"x tool" is that tool's median time over this row's (above 1: this row's tool is faster).

| case | CDN limit | tool | runs (s) | median (s) | MB/s | CPU (s) | {header} |
|---|---|---|---|---|---|---|{'---|' * len(tools)}
{chr(10).join(rows)}

## Goals

{chr(10).join(goals)}

## Resume after `kill -9` at half ({_rate(rates[0])}, the single file)

The tool is killed once it has written half the file (`wchar` in `/proc/<pid>/io`), then run again.
"Re-sent" is what nginx sent in the second run beyond what was still missing after the first.

| tool | written before the kill | sent in run 1 | sent in run 2 | re-sent | re-sent / written | run 2 (s) |
|---|---|---|---|---|---|---|
{chr(10).join(res)}

mcard keeps the data file and a journal of the ranges written (one line appended after each
write, so `kill -9` loses at most what was in flight); the next run checks the journal and asks
only for the missing ranges. `hf download` (huggingface_hub {_hf_version()}) downloads into a temporary file
with a name unique to the process (`<etag>.<random>.incomplete`) that no later run reuses, so an
interrupted file starts over (and `kill -9` leaves that file behind). aria2c saves its control
file every 60 s (`--auto-save-interval`), so one killed within its first minute starts over too.

On the limited rows the ceilings differ by design: nginx's `limit_rate` caps each response, so a
client gets 25 MB/s per connection it opens: 8 x 25 = 200 MB/s for mcard and aria2c on the single
file, 25 MB/s for aria2c-x1 and hf; on the 4 shards up to 32 connections for mcard (8 per file, 4
files at once) and aria2c (`-x 8` per file, `-j 8`), 4 for hf, 1 for aria2c-x1.
"""


def _hf_version() -> str:
    from importlib.metadata import version

    return version("huggingface_hub")


def _goals(case: Case, rate: int, med: dict[str, float], tools: list[str]) -> list[str]:
    out = []
    speed = {t: 1 / med[t] for t in tools}
    if rate and "aria2c" in tools:
        r = speed["mcard"] / speed["aria2c"]
        out.append(f"- {case.name}, {_rate(rate)}: mcard / aria2c = {r:.2f} (goal >= 0.9: "
                   f"{'met' if r >= 0.9 else f'missed by {0.9 - r:.2f}'})")
    if rate and "aria2c-x1" in tools:
        r = speed["mcard"] / speed["aria2c-x1"]
        out.append(f"- {case.name}, {_rate(rate)}: mcard / single-connection client (aria2c -x 1 -s 1 -j 1) = "
                   f"{r:.2f} (goal >= 5: {'met' if r >= 5 else f'missed by {5 - r:.2f}'})")
    if rate and "hf" in tools:
        r = speed["mcard"] / speed["hf"]
        out.append(f"- {case.name}, {_rate(rate)}: mcard / hf download (one connection per file: "
                   f"{len(case.files)} here) = {r:.2f} (no goal; for comparison)")
    others = [t for t in tools if t not in ("mcard", "aria2c-nocheck")]
    if not rate and others:
        best = max(others, key=lambda t: speed[t])
        r = speed["mcard"] / speed[best]
        out.append(f"- {case.name}, unlimited: mcard / best other ({best}) = {r:.2f} (goal >= 1.0: "
                   f"{'met' if r >= 1.0 else f'missed by {1.0 - r:.2f}'})")
    return out


if __name__ == "__main__":
    main()
