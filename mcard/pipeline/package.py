"""``mcard package``: assemble, from quantizer outputs, the exact folder each branch of a repo will hold.

For a registry entry, every branch gets a folder ``OUT/<branch>/`` (GGUF and
GGML files share ``main``) holding:

* the weights from ``--from DIR`` (``DIR/<branch>/`` for a branch variant,
  ``DIR/<file>`` for a GGUF/GGML file, or the variant's ``source`` in the
  entry) under the names runtimes load (``model.safetensors``,
  ``adapter_model.safetensors`` or the entry's ``file``), sharded with a
  ``model.safetensors.index.json`` when bigger than ``max_shard_size``;
* ``config.json`` with the variant's ``quantization_config`` (and AutoGPTQ's
  ``quantize_config.json``), the base model's tokenizer and generation files,
  the entry's license file, a ``.gitattributes`` with the Hub's LFS patterns,
  and the rendered card as ``README.md`` (the same card on every branch).

Nothing is half-written: the package is built in a fresh sibling folder (a
new name, created by mcard: never one that was already there) and moved over
``OUT`` only once every variant passed ``validate`` twice (its source, then
the package). Every file in it is written through :class:`mcard.core.pathguard.Target`
(no symlink followed, none created); ``OUT`` itself may not be a symlink.
``OUT/mcard-package.json`` records each file's size, sha256 and origin;
:meth:`Package.verify` checks the folder against it before anything is
published (a symlink in it is refused). Pickles are refused, never loaded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import CheckFailed, McardError, UnusableInput
from ..core.jsonio import load_json_object
from ..core.pathguard import Target
from ..hub.rules import (
    DEFAULT_LFS_PATTERNS,
    MAX_FILE_BYTES,
    REGULAR_FILE_LIMIT,
    check_branch,
    check_path,
    check_repo_id,
    gitattributes_text,
    matches,
    upload_mode,
)
from ..registry.entry import RegistryVariant, load_entry
from .package_configs import describe, registry_mismatches
from .package_plan import (
    Item,
    branch_folder,
    branch_groups,
    check_collisions,
    license_item,
    plan_branch_variant,
    plan_file_variant,
    source_of,
)

MANIFEST = "mcard-package.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size, "5GB"
_LINK_FROM = REGULAR_FILE_LIMIT  # weights are hard-linked when possible, small files always copied


@dataclass
class PackagedFile:
    path: str
    size: int
    sha256: str
    source: str  # where it came from: a source path, "generated", "registry entry"...
    lfs: bool
    git_sha1: str | None = None  # the git blob id, for files small enough to be committed as plain git blobs
    stat: tuple[int, int, int] = (0, 0, 0)  # (size, mtime_ns, inode) when written: cheap re-verification

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "source": self.source,
                "lfs": self.lfs, "git_sha1": self.git_sha1, "stat": list(self.stat)}


@dataclass
class PackagedBranch:
    branch: str
    folder: str  # relative to the package root
    variants: list[str]
    message: str
    files: list[PackagedFile] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (source file, why it is not packaged)

    def to_dict(self) -> dict[str, Any]:
        return {"branch": self.branch, "folder": self.folder, "variants": self.variants, "message": self.message,
                "files": [f.to_dict() for f in self.files],
                "ignored": [{"path": p, "reason": r} for p, r in self.ignored]}


@dataclass
class VariantCheck:
    """``validate`` on a variant's source and on its packaged files."""

    variant: str
    branch: str
    source_errors: list[str] = field(default_factory=list)
    package_errors: list[str] | None = None  # None: not packaged

    @property
    def ok(self) -> bool:
        return not self.source_errors and not self.package_errors


@dataclass
class Package:
    root: Path
    repo: str
    entry: str
    branches: list[PackagedBranch]
    checks: list[VariantCheck] = field(default_factory=list)
    mcard: str = __version__

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def branch(self, name: str) -> PackagedBranch:
        for b in self.branches:
            if b.branch == name:
                return b
        raise UnusableInput(f"no branch {name!r} in the package; it has {', '.join(b.branch for b in self.branches)}",
                            self.root)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "repo": self.repo, "entry": self.entry, "out": str(self.root), "mcard": self.mcard,
                "branches": [b.to_dict() for b in self.branches], "checks": [asdict(c) for c in self.checks]}

    def save(self) -> None:
        doc = self.to_dict()
        doc.pop("out")
        Target(self.root).write_atomic(self.root / MANIFEST, json.dumps(doc, indent=2) + "\n")

    def verify(self) -> None:
        """Check the folder still holds exactly what was packaged (sizes, sha256; no extra file, no pickle)."""
        target = Target(self.root)
        for b in self.branches:
            folder = target.check(self.root / b.folder / "_").parent  # not a symlink out of the package
            want = {f.path: f for f in b.files}
            found = _files_in(folder)
            for path in found.values():
                if path.is_symlink():  # mcard never writes one: what it points at is not what was packaged
                    raise UnusableInput("a symlink in the package folder; run `mcard package` again", path)
                target.check(path)
            for rel in sorted(set(found) - set(want)):
                from ..core.variant import sniff

                if sniff(folder / rel) == "pickle":
                    raise UnusableInput("a pickle file in the package; mcard never publishes pickles", folder / rel)
                raise UnusableInput("in the package folder but not in its manifest; run `mcard package` again",
                                    folder / rel)
            for rel in sorted(set(want) - set(found)):
                raise UnusableInput("listed in the package manifest but missing; run `mcard package` again",
                                    folder / rel)
            for rel, f in want.items():
                path = folder / rel
                st = path.stat()
                if (st.st_size, st.st_mtime_ns, st.st_ino) == tuple(f.stat) and st.st_size == f.size:
                    continue
                if st.st_size != f.size or _sha256(path) != f.sha256:
                    raise CheckFailed(f"changed since it was packaged (sha256 {f.sha256[:12]}..., {f.size} bytes); "
                                      "run `mcard package` again", path)


def load_package(root: str | Path) -> Package:
    """A package written by :func:`package`, from its ``mcard-package.json``."""
    root = Path(root)
    doc = load_json_object(root / MANIFEST)
    try:
        branches = []
        for b in doc["branches"]:
            files = [PackagedFile(f["path"], int(f["size"]), f["sha256"], f.get("source", ""), bool(f["lfs"]),
                                  f.get("git_sha1"), tuple(f.get("stat") or (0, 0, 0))) for f in b["files"]]
            branches.append(PackagedBranch(b["branch"], b["folder"], list(b["variants"]), b["message"], files,
                                           [(i["path"], i["reason"]) for i in b.get("ignored", [])]))
        checks = [VariantCheck(**c) for c in doc.get("checks", [])]
        pkg = Package(root, doc["repo"], doc["entry"], branches, checks, doc.get("mcard", "?"))
    except (KeyError, TypeError, ValueError) as exc:
        raise UnusableInput(f"not a valid mcard package manifest ({type(exc).__name__}: {exc})", root / MANIFEST) from None
    for b in pkg.branches:
        check_branch(b.branch)
        if Path(b.folder).is_absolute() or ".." in Path(b.folder).parts:
            raise UnusableInput(f"branch folder {b.folder!r} is outside the package", root / MANIFEST)
        for f in b.files:
            check_path(f.path)
    return pkg


# -- checking the folder -------------------------------------------------------------------------


def _files_in(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# -- writing ----------------------------------------------------------------------------------------


def _write_item(item: Item, folder: Path, target: Target) -> list[PackagedFile]:
    """Write one planned file (or its shards) under ``target``; an OSError names the file in the package."""
    try:
        return _write(item, folder, target)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, f"{folder.name}/{item.path}") from None


def _write(item: Item, folder: Path, target: Target) -> list[PackagedFile]:
    from .package_shard import write_shards

    dest = target.check(folder / item.path)
    target.mkdirs(dest.parent)
    out: list[PackagedFile] = []
    if item.data is not None:
        with target.open(dest, "wb") as fh:
            fh.write(item.data)
    elif item.src is not None:
        linked = False
        if item.src.stat().st_size >= _LINK_FROM:
            try:
                os.link(item.src, dest)
                linked = True
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
        if not linked:
            with open(item.src, "rb") as src, target.open(dest, "wb") as fh:
                shutil.copyfileobj(src, fh, 1 << 20)
    else:
        header, stem, max_shard = item.shards

        def shard_done(name: str, path: Path) -> None:
            out.append(_describe(path, name, f"{header.path} (shard)"))

        _names, index = write_shards(header, folder, stem, max_shard, shard_done,
                                     opener=lambda p: target.open(p, "wb"))
        with target.open(dest, "wb") as fh:
            fh.write((json.dumps(index, indent=2) + "\n").encode("utf-8"))
    out.append(_describe(dest, item.path, item.origin))
    return out


def _describe(path: Path, rel: str, origin: str) -> PackagedFile:
    st = path.stat()
    with path.open("rb") as f:
        sample = f.read(512)
    sha = _sha256(path)
    git_sha1 = None
    if st.st_size < REGULAR_FILE_LIMIT:
        git_sha1 = hashlib.sha1(b"blob %d\0" % st.st_size + path.read_bytes()).hexdigest()
    lfs = upload_mode(rel, st.st_size, sample, DEFAULT_LFS_PATTERNS) == "lfs"
    return PackagedFile(rel, st.st_size, sha, origin, lfs, git_sha1, (st.st_size, st.st_mtime_ns, st.st_ino))


def _gitattributes(files: list[PackagedFile]) -> bytes:
    patterns = list(DEFAULT_LFS_PATTERNS)
    if any(f.path.endswith(".gguf") for f in files):
        patterns.append("*.gguf")
    for f in files:
        if f.lfs and not any(matches(f.path, p) for p in patterns):
            patterns.append(f.path.replace(" ", "[[:space:]]"))
    return gitattributes_text(patterns).encode()


def _validate(path: Path, v: RegistryVariant) -> list[str]:
    from ..core.validate import inspect

    report = inspect(path)
    errors = [f"{f.code}: {f.file} {f.where} {f.message}".replace("  ", " ").strip()
              for f in report.all_findings() if f.severity.value == "error"]
    return errors + registry_mismatches(v, report.params)


def _first(errors: list[str]) -> str:
    return errors[0] + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")


def _prepare_out(out: Path) -> None:
    if out.is_symlink():  # the package replaces OUT whole: a link would silently become a folder
        raise UnusableInput(f"is a symlink (to {os.readlink(out)!r}); give the folder itself as --out", out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise UnusableInput(f"exists and is not an mcard package (no {MANIFEST}); choose another --out", out)


def _move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def package(entry_path: str | Path, from_dir: str | Path | None = None, out: str | Path | None = None, *,
            base_dir: str | Path | None = None, max_shard_size: int = DEFAULT_MAX_SHARD_BYTES,
            allow_failing: bool = False, max_file_size: int = MAX_FILE_BYTES,
            registry_root: str | Path | None = None) -> Package:
    """Assemble every branch of the entry's repo into ``out`` (default ``packages/<repo>``); see the module doc.

    Raises :class:`UnusableInput` (exit 2) for missing or unusable inputs,
    :class:`CheckFailed` (exit 1) when a variant fails validate (unless
    ``allow_failing``), :class:`McardError` (exit 1) when the package cannot
    be written (a full disk); ``out`` is then left as it was. Paths the entry names
    (``source``, ``license_file``...) stay inside its folder or ``registry_root``;
    ``from_dir`` and ``base_dir`` are the caller's own and may lie anywhere.
    """
    from ..card.render import render_card
    from .sync_report import slug

    entry = load_entry(entry_path, registry_root)
    check_repo_id(entry.model.repo)
    from_path = Path(from_dir) if from_dir is not None else None
    out_path = Path(out) if out is not None else Path("packages") / slug(entry.model.repo)
    _prepare_out(out_path)
    base = Path(base_dir) if base_dir is not None else None
    if base is None and entry.architecture_source and entry.architecture_source.endswith(".json"):
        base = Path(entry.architecture_source).parent  # [architecture] config = "<base model>/config.json"

    groups = branch_groups(entry)
    sources = {v.key: source_of(entry, v, from_path) for v in entry.variants}
    plans: dict[str, tuple[list[Item], list[tuple[str, str]]]] = {}
    license_file = license_item(entry)
    for branch, variants in groups.items():
        check_branch(branch)
        ignored: list[tuple[str, str]] = []
        if variants[0].spec.files_are_variants:
            items = [item for v in variants for item in plan_file_variant(v, sources[v.key], max_file_size)]
        else:
            items, ignored = plan_branch_variant(entry, variants[0], sources[variants[0].key], base,
                                                 max_shard_size, max_file_size)
        if license_file is not None:
            items.append(license_file)
        check_collisions(branch, items)
        plans[branch] = (items, ignored)

    checks = {v.key: VariantCheck(v.key, v.branch, _validate(sources[v.key], v)) for v in entry.variants}
    failing = [c for c in checks.values() if c.source_errors]
    if failing and not allow_failing:
        raise CheckFailed(f"variant {failing[0].variant} fails validate: {_first(failing[0].source_errors)}; "
                          "fix it, or pass --allow-failing", sources[failing[0].variant])

    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = out_path.parent / f".{out_path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    pkg = Package(out_path, entry.model.repo, str(entry.path), [], list(checks.values()))
    try:
        os.mkdir(staging)  # a new folder (fails on anything already there, a planted symlink included)
        target = Target(staging)
        paths: dict[str, Path] = {}
        for branch, (items, ignored) in plans.items():
            variants = groups[branch]
            folder = target.mkdirs(staging / branch_folder(branch))
            files = [f for item in items for f in _write_item(item, folder, target)]
            pkg.branches.append(PackagedBranch(branch, branch_folder(branch), [v.key for v in variants],
                                               f"mcard {__version__}: {describe(variants)}", files, ignored))
            for v in variants:
                paths[v.key] = folder / v.file if v.spec.files_are_variants and v.file else folder
        card = render_card(entry.path, variant_paths=paths, registry_root=registry_root).encode()
        for b in pkg.branches:
            folder = staging / b.folder
            with target.open(folder / "README.md", "wb") as fh:
                fh.write(card)
            b.files.append(_describe(folder / "README.md", "README.md", "rendered card"))
            with target.open(folder / ".gitattributes", "wb") as fh:
                fh.write(_gitattributes(b.files))
            b.files.append(_describe(folder / ".gitattributes", ".gitattributes", "the Hub's LFS patterns"))
            b.files.sort(key=lambda f: f.path)
        for v in entry.variants:
            if not checks[v.key].source_errors or allow_failing:
                checks[v.key].package_errors = _validate(paths[v.key], v)
        failing = [c for c in checks.values() if c.package_errors]
        if failing and not allow_failing:
            raise CheckFailed(f"the packaged variant {failing[0].variant} fails validate: "
                              f"{_first(failing[0].package_errors or [])}")
        pkg.root = staging
        pkg.save()
        _move_into_place(staging, out_path)
        pkg.root = out_path
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise McardError(f"cannot write the package{where}: {exc.strerror or exc}; {out_path} is unchanged") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return pkg
