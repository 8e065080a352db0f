"""``mcard plan``: the CI jobs of a registry, one per variant (batches beyond the matrix limit).

A job says whether ``mcard smoke`` would run a CUDA kernel for its variant (the format spec's
``kernel_runs``, asking :mod:`cupy_kernels.limits`), so GPU jobs can go to GPU runners;
``mcard sync --batch I`` recomputes the same plan and runs job ``I``.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UnusableInput
from ..registry.entry import RegistryVariant, load_entry

# GitHub Actions runs at most 256 jobs from one matrix: beyond that `plan` batches variants per job.
MAX_MATRIX_JOBS = 256


def entry_paths(target: str | Path) -> list[Path]:
    """A registry entry, or every ``*.toml`` directly inside a registry folder (sorted)."""
    target = Path(target)
    if target.is_dir():
        found = sorted(target.glob("*.toml"))
        if not found:
            raise UnusableInput("no *.toml registry entries in this folder", target)
        return found
    if not target.is_file():
        raise UnusableInput("no such registry entry or folder", target)
    return [target]



@dataclass(frozen=True)
class PlannedVariant:
    """One variant of a plan: its entry, and whether smoke would run a CUDA kernel for it."""

    entry: str
    repo: str
    variant: str
    format: str
    gpu: bool


def planned_variants(target: str | Path, registry_root: str | Path | None = None) -> list[PlannedVariant]:
    """Every variant of ``target``, GPU ones first, then in registry order."""
    out = []
    for path in entry_paths(target):
        entry = load_entry(path, registry_root)
        arch = None if entry.architecture is None else json.dumps(entry.architecture, sort_keys=True)
        for v in entry.variants:
            out.append(PlannedVariant(path.as_posix(), entry.model.repo, v.key, v.format, needs_gpu(v, arch)))
    return sorted(out, key=lambda p: not p.gpu)  # stable: registry order within each group


def needs_gpu(v: RegistryVariant, architecture: str | None = None) -> bool:
    """Whether ``mcard smoke`` would run a CUDA kernel for this variant (asked of the kernel facts).

    ``architecture``: the entry's ``[architecture]`` as sorted JSON; it decides a GGUF mix's types.
    """
    return v.spec.kernel_runs(v, architecture)


def plan_batches(target: str | Path, max_jobs: int = MAX_MATRIX_JOBS,
                 registry_root: str | Path | None = None) -> list[list[PlannedVariant]]:
    """The variants of ``target`` in at most ``max_jobs`` jobs: one variant a job when they fit, else
    batches of equal size, each all-GPU or all-CPU. Deterministic: ``sync --batch I`` recomputes it."""
    if max_jobs < 1:
        raise UnusableInput(f"--max-jobs {max_jobs}: must be at least 1")
    variants = planned_variants(target, registry_root)
    if len(variants) <= max_jobs:
        return [[p] for p in variants]
    groups = [[p for p in variants if p.gpu], [p for p in variants if not p.gpu]]
    groups = [g for g in groups if g]
    if len(groups) > max_jobs:
        raise UnusableInput(f"--max-jobs {max_jobs}: GPU and CPU variants need at least {len(groups)} jobs")
    size = math.ceil(len(variants) / (max_jobs - len(groups) + 1))
    return [g[i:i + size] for g in groups for i in range(0, len(g), size)]


def batch_selection(target: str | Path, batch: int, max_jobs: int = MAX_MATRIX_JOBS,
                    registry_root: str | Path | None = None) -> dict[Path, set[str]]:
    """Entry path -> variant keys of job ``batch`` (1-based) of :func:`plan_batches`."""
    batches = plan_batches(target, max_jobs, registry_root)
    if not 1 <= batch <= len(batches):
        raise UnusableInput(f"--batch {batch}: the plan has jobs 1 to {len(batches)} (--max-jobs {max_jobs})", target)
    out: dict[Path, set[str]] = {}
    for p in batches[batch - 1]:
        out.setdefault(Path(p.entry), set()).add(p.variant)
    return out


def plan_jobs(target: str | Path, max_jobs: int = MAX_MATRIX_JOBS,
              registry_root: str | Path | None = None) -> list[dict[str, Any]]:
    """The CI jobs for ``target``: what a matrix runs with ``mcard sync TARGET --batch N``.

    Each job has ``batch`` (its number), ``gpu`` (a CUDA kernel would run: send it to a GPU runner),
    ``count`` and ``command``; a job of one variant also has ``entry``, ``repo``, ``variant`` and
    ``format``, and its command names them. Beyond ``max_jobs`` variants, jobs hold batches.
    """
    target_text = Path(target).as_posix()
    jobs = []
    batches = plan_batches(target, max_jobs, registry_root)
    limit = "" if max_jobs == MAX_MATRIX_JOBS else f" --max-jobs {max_jobs}"
    if registry_root is not None:
        limit += f" --registry-root {shlex.quote(Path(registry_root).as_posix())}"
    single = all(len(b) == 1 for b in batches)
    for i, batch in enumerate(batches, 1):
        job: dict[str, Any] = {"batch": i, "gpu": batch[0].gpu, "count": len(batch)}
        if single:
            p = batch[0]
            job.update(entry=p.entry, repo=p.repo, variant=p.variant, format=p.format,
                       command=f"mcard sync {shlex.quote(p.entry)} --variant {shlex.quote(p.variant)}{limit}")
        else:
            job["command"] = f"mcard sync {shlex.quote(target_text)} --batch {i}{limit}"
        jobs.append(job)
    return jobs
