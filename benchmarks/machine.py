"""The machine line every benchmark's results file starts with: cores, CPU, memory, OS, load, versions.

    from machine import describe  # the benchmarks' folder is on sys.path when a script runs
    describe(packages=("huggingface_hub", "httpx"), commands=(["nginx", "-v"],))
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's machine name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package(name: str) -> str:
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return f"{name} (not installed)"


def _command(cmd: Sequence[str]) -> str:
    """The first line a tool prints for its version (nginx prints it on stderr)."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
        return (done.stdout or done.stderr).splitlines()[0].strip().removeprefix("nginx version: ")
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return f"{cmd[0]} (not found)"


def describe(packages: Iterable[str] = (), commands: Iterable[Sequence[str]] = ()) -> str:
    """``N cores (CPU), M GiB RAM, Linux R, load L; Python V, <package versions>, <tool versions>``.

    The load average is read when this is called: on a shared machine, say so beside the figures.
    """
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    parts = [f"Python {platform.python_version()}", *(_package(p) for p in packages), *(_command(c) for c in commands)]
    return (f"{os.cpu_count()} cores ({cpu_model()}), {mem:.0f} GiB RAM, CPU only, {platform.system()} "
            f"{platform.release()}, load average {load:.2f} (1 min) when written; " + ", ".join(parts))
