"""``mcard branches`` as a library call: every branch and tag with its commit, size and quant check.

For each ref: the commit it points at, the file count and total size from the
recursive tree listing, the quant parameters stated by its name
(:func:`~mcard.hub.refs.params_from_branch`) and by its own
``quantize_config.json`` / ``config.json`` (fetched alone, verified, at most
4 MiB), and every disagreement between them. A disagreement is reported,
never smoothed over. Refs are examined in parallel.

With ``HF_HUB_OFFLINE`` set, the refs and snapshots in the HF cache are used.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import McardError, UnusableInput
from ..core.jsonio import parse_json_bytes
from ..core.units import format_size
from .cache import cached_revision, repo_folder_name
from .env import resolve_env
from .model import RemoteFile, Revision
from .refs import (
    COMMIT_RE,
    Disagreement,
    QuantParams,
    RepoSpec,
    compare_params,
    params_from_branch,
    params_from_configs,
    parse_repo_spec,
    unusable_numbers,
)
from .remote import HubClient
from .transfer import RetryPolicy

CONFIG_FILES = ("quantize_config.json", "config.json")


@dataclass
class RefReport:
    """One branch or tag."""

    name: str
    kind: str
    commit: str
    name_params: QuantParams = field(default_factory=QuantParams)
    config_params: dict[str, QuantParams] = field(default_factory=dict)
    disagreements: list[Disagreement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    file_count: int = 0
    total_size: int = 0
    error: str | None = None
    gguf_variants: list[dict[str, Any]] = field(default_factory=list)  # a shard set counts once

    @property
    def status(self) -> str:
        """``agrees``, ``DISAGREES``, ``no config``, ``config only``, ``-`` (nothing stated) or ``error``."""
        if self.error:
            return "error"
        if self.disagreements:
            return "DISAGREES"
        if self.name_params.is_empty():
            return "config only" if self.config_params else "-"
        return "agrees" if self.config_params else "no config"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "commit": self.commit,
            "name_params": None if self.name_params.is_empty() else self.name_params.as_dict(),
            "config_params": {src: p.as_dict() for src, p in self.config_params.items()},
            "status": self.status, "agrees": not self.disagreements and not self.error,
            "disagreements": [{"key": d.key, "left_source": d.left_source, "left": d.left,
                               "right_source": d.right_source, "right": d.right, "message": str(d)}
                              for d in self.disagreements],
            "notes": self.notes, "file_count": self.file_count, "total_size": self.total_size, "error": self.error,
            "gguf_variants": self.gguf_variants,
        }


@dataclass
class BranchListing:
    repo_id: str
    refs: list[RefReport]
    offline: bool = False

    @property
    def ok(self) -> bool:
        """Every ref was read and none disagrees with its own configs (``mcard branches`` exits 1 otherwise)."""
        return not any(r.error or r.disagreements for r in self.refs)

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo_id, "offline": self.offline, "ok": self.ok,
                "refs": [r.to_dict() for r in self.refs]}


def _parse_config(data: bytes, where: str, report: RefReport) -> dict[str, Any] | None:
    try:
        value = parse_json_bytes(data, where)
    except UnusableInput as exc:
        report.notes.append(f"unreadable: {exc}")
        return None
    if not isinstance(value, dict):
        report.notes.append(f"{where}: expected a JSON object")
        return None
    return value


def _check(report: RefReport, configs: dict[str, dict[str, Any] | None]) -> None:
    """Fill the parameter fields and disagreements of ``report`` from the parsed configs."""
    for source, cfg in configs.items():
        section = cfg.get("quantization_config") if source == "config.json" and isinstance(cfg, dict) else cfg
        if not isinstance(section, dict):  # unusable_numbers finds nothing in it
            continue
        for key in unusable_numbers(section):
            report.notes.append(f"{source}: {key} is not a finite number ({str(section[key])[:20]}); ignored")
    report.name_params = params_from_branch(report.name)
    report.config_params = params_from_configs(configs.get("quantize_config.json"), configs.get("config.json"))
    for source, params in report.config_params.items():
        report.disagreements += compare_params(report.name_params, params, "branch name", source)
    if len(report.config_params) == 2:
        a, b = report.config_params["quantize_config.json"], report.config_params["config.json"]
        report.disagreements += compare_params(a, b, "quantize_config.json", "config.json")
    if not report.name_params.is_empty() and not report.config_params:
        report.notes.append("no quantize_config.json or config.json quantization_config to check the name against")


def _gguf(report: RefReport, files: list[tuple[str, int]]) -> None:
    """The ref's GGUF variants, a gguf-split shard set or raw parts counted once; incomplete sets noted."""
    from ..formats.gguf.split import variants

    report.gguf_variants = variants(files)
    for v in report.gguf_variants:
        if v["kind"] != "file":
            report.notes.append(f"GGUF {v['name']}: {len(v['files'])} {v['kind']}, {format_size(v['size'])}"
                                + (f"; missing {', '.join(v['missing'])}" if v["missing"] else ""))


def _remote_ref(client: HubClient, rev: Revision) -> RefReport:
    report = RefReport(rev.name, rev.kind, rev.commit)
    try:
        if not COMMIT_RE.match(str(rev.commit)):
            raise McardError(f"server gave an invalid commit id {rev.commit!r}")
        files = client.list_files(rev)
        report.file_count, report.total_size = len(files), sum(f.size for f in files)
        _gguf(report, [(f.path, f.size) for f in files])
        by_path: dict[str, RemoteFile] = {f.path: f for f in files}
        configs: dict[str, dict[str, Any] | None] = {}
        for name in CONFIG_FILES:
            rf = by_path.get(name)
            if rf is not None:
                where = f"{rev.repo_id}@{rev.name}:{name}"
                configs[name] = _parse_config(client.get_small(rev, rf), where, report)
        _check(report, configs)
    except McardError as exc:
        report.error = client.env.scrub(str(exc))
        report.name_params = params_from_branch(rev.name)
    return report


def _offline_listing(cache_dir: Path, repo_id: str) -> BranchListing:
    refs_dir = Path(cache_dir) / repo_folder_name(repo_id) / "refs"
    if not refs_dir.is_dir():
        raise McardError(f"{repo_id}: no refs in the cache and HF_HUB_OFFLINE is set (unset it to list from "
                         f"the Hub); looked in {refs_dir}")
    reports = []
    for ref in sorted(p for p in refs_dir.rglob("*") if p.is_file()):
        name = ref.relative_to(refs_dir).as_posix()
        rev, files = cached_revision(cache_dir, RepoSpec(repo_id, name))
        report = RefReport(name, "ref", rev.commit, file_count=len(files), total_size=sum(f.size for f, _ in files))
        _gguf(report, [(f.path, f.size) for f, _ in files])
        configs = {}
        for rf, path in files:
            if rf.path in CONFIG_FILES:
                configs[rf.path] = _parse_config(path.read_bytes(), f"{repo_id}@{name}:{rf.path}", report)
        _check(report, configs)
        report.notes.append("from the local cache (offline)")
        reports.append(report)
    return BranchListing(repo_id, reports, offline=True)


def list_branches(repo: str, *, include_tags: bool = True, endpoint: str | None = None, token: str | None = None,
                  cache_dir: str | Path | None = None, offline: bool | None = None, workers: int = 8,
                  policy: RetryPolicy | None = None, timeout: float = 30.0) -> BranchListing:
    """List the branches (and tags) of ``repo`` with commit, size, and name-vs-config quant parameters."""
    env = resolve_env(endpoint, token, cache_dir, offline)
    spec = parse_repo_spec(repo)
    if spec.revision is not None:
        raise UnusableInput(f"{repo}: branches lists every branch; give the repo without a revision")
    if env.offline:
        return _offline_listing(env.cache_dir, spec.repo_id)
    with HubClient(env, policy=policy, timeout=timeout) as client:
        refs = client.refs(spec.repo_id)
        revs = [Revision(spec.repo_id, b.name, "branch", b.target_commit) for b in refs.branches]
        if include_tags:
            revs += [Revision(spec.repo_id, t.name, "tag", t.target_commit) for t in refs.tags]
        revs.sort(key=lambda r: (r.kind != "branch", r.name != "main", r.name))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            reports = list(pool.map(lambda r: _remote_ref(client, r), revs))
    return BranchListing(spec.repo_id, reports)


def listing_json(listing: BranchListing) -> str:
    return json.dumps(listing.to_dict(), indent=2, default=str)
