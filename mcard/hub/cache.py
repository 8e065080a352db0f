"""Where downloaded files go: the Hugging Face cache, or a plain folder.

:class:`CacheLayout` writes the layout huggingface_hub writes, so every HF
tool reuses the files::

    <cache>/models--<org>--<name>/
        blobs/<sha256 for LFS files | git blob id for others>
        snapshots/<commit>/<path>  -> ../../blobs/<etag>   (relative symlink)
        refs/<branch or tag>        (the commit id, no newline)
    <cache>/.locks/models--<org>--<name>/<etag>.lock       (same lock files as huggingface_hub)

A partial download is ``blobs/<etag>.incomplete``.

:class:`LocalDirLayout` writes ``<dir>/<path>`` and keeps its bookkeeping
where ``hf download --local-dir`` keeps it:
``<dir>/.cache/huggingface/download/<path>.metadata`` (commit, etag,
timestamp) and ``<path>.lock``; partial files are
``<path>.<etag>.incomplete`` in that folder.

:func:`cached_revision` resolves a revision from the cache alone (for
``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..core.errors import McardError, UnusableInput
from ..core.pathguard import Target
from ..core.untrusted import read_capped
from .model import SHA256_RE, RemoteFile, Revision, safe_relpath
from .refs import COMMIT_RE, RepoSpec, validate_revision

MAX_REF_BYTES = 4096  # a refs/<name> file holds a 40-character commit id

CACHEDIR_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                "# This file is a cache directory tag created by huggingface_hub.\n"
                "# For information about cache directory tags, see:\n#\thttps://bford.info/cachedir/\n")


def repo_folder_name(repo_id: str) -> str:
    """``models--org--name``, as huggingface_hub names a model repo's cache folder."""
    return "--".join(["models", *repo_id.split("/")])


def _link_or_copy(blob: Path, pointer: Path) -> None:
    """Relative symlink ``pointer -> blob`` (replacing what was there); a copy where symlinks fail."""
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    rel = os.path.relpath(blob, pointer.parent)
    try:
        os.symlink(rel, pointer)
    except OSError:
        shutil.copyfile(blob, pointer)


class CacheLayout:
    """The HF cache of one repo at one commit."""

    kind = "cache"

    def __init__(self, cache_dir: Path, rev: Revision) -> None:
        self.rev = rev
        self.cache_dir = Path(cache_dir)
        self.storage = self.cache_dir / repo_folder_name(rev.repo_id)
        self.snapshot = self.storage / "snapshots" / rev.commit
        self.target = Target(self.cache_dir)  # blobs, snapshots, refs and .locks: all checked

    @property
    def root(self) -> Path:
        """The folder the user gets: the snapshot."""
        return self.snapshot

    def check(self, rf: RemoteFile) -> None:
        safe_relpath(rf.path, str(self.snapshot))

    def blob(self, rf: RemoteFile) -> Path:
        return self.storage / "blobs" / rf.etag

    def final_path(self, rf: RemoteFile) -> Path:
        return self.blob(rf)

    def partial_path(self, rf: RemoteFile) -> Path:
        return self.storage / "blobs" / f"{rf.etag}.incomplete"

    @property
    def lock_dir(self) -> Path:
        return self.cache_dir / ".locks" / repo_folder_name(self.rev.repo_id)

    def lock_path(self, rf: RemoteFile) -> Path:
        return self.lock_dir / f"{rf.etag}.lock"

    def user_path(self, rf: RemoteFile) -> Path:
        return self.snapshot.joinpath(*rf.path.split("/"))

    def is_cached(self, rf: RemoteFile) -> bool:
        blob = self.blob(rf)
        return not blob.is_symlink() and blob.is_file() and blob.stat().st_size == rf.size

    def prepare(self) -> None:
        """Create the folders (called once, before any download), refusing any that lead out of the cache."""
        self.target.mkdirs(self.cache_dir)
        tag = self.cache_dir / "CACHEDIR.TAG"
        if not os.path.lexists(tag):
            try:
                with self.target.open(tag, "wb") as fh:
                    fh.write(CACHEDIR_TAG.encode())
            except OSError:
                pass
        self.target.mkdirs(self.storage / "blobs")
        self.target.mkdirs(self.snapshot)
        self.target.mkdirs(self.lock_dir)

    def finish(self, rf: RemoteFile) -> Path:
        """Point the snapshot entry at the (verified) blob; return the user-visible path."""
        pointer = self.target.child(f"{self.snapshot.relative_to(self.cache_dir).as_posix()}/{rf.path}")
        self.target.mkdirs(pointer.parent)
        blob = self.blob(rf)
        if not (pointer.is_symlink() and os.path.realpath(pointer) == os.path.realpath(blob)):
            _link_or_copy(blob, pointer)
        return pointer

    def complete(self) -> None:
        """Record ``refs/<branch or tag>`` = commit (not for a bare commit), atomically."""
        if self.rev.kind != "commit":
            ref = self.storage / "refs" / validate_revision(self.rev.name)
            if ref.is_symlink() or not ref.is_file() or _read_ref(ref) != self.rev.commit:
                self.target.write_atomic(self.target.check(ref), self.rev.commit)


def _read_ref(ref: Path) -> str:
    """A cache ``refs/<name>`` file: a commit id (a regular file, read capped); "" when it is anything else."""
    try:
        return read_capped(ref, MAX_REF_BYTES).decode("utf-8", "replace").strip()
    except UnusableInput:
        return ""


class LocalDirLayout:
    """Files written straight into ``local_dir``, with huggingface_hub-compatible metadata."""

    kind = "local_dir"

    def __init__(self, local_dir: Path, rev: Revision) -> None:
        self.rev = rev
        self.local_dir = Path(local_dir)
        self.meta_dir = self.local_dir / ".cache" / "huggingface" / "download"
        self.target = Target(self.local_dir)  # final files and bookkeeping alike

    @property
    def root(self) -> Path:
        return self.local_dir

    def check(self, rf: RemoteFile) -> None:
        safe_relpath(rf.path, str(self.local_dir))
        if rf.path.startswith(".cache/huggingface/"):
            raise UnusableInput(f"refusing to overwrite download bookkeeping with {rf.path!r}", str(self.local_dir))

    def _meta(self, rf: RemoteFile, suffix: str) -> Path:
        return self.meta_dir.joinpath(*rf.path.split("/")).with_name(rf.path.rsplit("/", 1)[-1] + suffix)

    def final_path(self, rf: RemoteFile) -> Path:
        return self.target.child(rf.path)

    def partial_path(self, rf: RemoteFile) -> Path:
        return self._meta(rf, f".{rf.etag}.incomplete")

    def lock_path(self, rf: RemoteFile) -> Path:
        return self._meta(rf, ".lock")

    def user_path(self, rf: RemoteFile) -> Path:
        return self.local_dir.joinpath(*rf.path.split("/"))

    def is_cached(self, rf: RemoteFile) -> bool:
        path, meta = self.user_path(rf), self._meta(rf, ".metadata")
        try:
            self.target.check(meta)
            lines = read_capped(meta, 4096).decode("utf-8", "replace").splitlines()
            stat = path.stat()
        except (OSError, UnusableInput):
            return False
        return (len(lines) >= 3 and lines[1].strip() == rf.etag and stat.st_size == rf.size
                and stat.st_mtime - 1 <= float(lines[2] or 0) and not path.is_symlink())

    def prepare(self) -> None:
        self.target.mkdirs(self.meta_dir)
        gitignore = self.meta_dir.parent / ".gitignore"
        if not os.path.lexists(gitignore):
            with self.target.open(gitignore, "wb") as fh:
                fh.write(b"*")

    def finish(self, rf: RemoteFile) -> Path:
        """Write the metadata that makes ``hf download --local-dir`` treat the file as up to date."""
        self.target.write_atomic(self._meta(rf, ".metadata"), f"{self.rev.commit}\n{rf.etag}\n{time.time()}\n")
        return self.user_path(rf)

    def complete(self) -> None:
        return None


def prepare_final(layout: CacheLayout | LocalDirLayout, rf: RemoteFile) -> Path:
    """Create the parent folder of ``rf``'s final path, refusing symlinked parents that lead outside."""
    final = layout.target.check(layout.final_path(rf))
    layout.target.mkdirs(final.parent)
    layout.target.mkdirs(layout.partial_path(rf).parent)
    layout.target.mkdirs(layout.lock_path(rf).parent)
    return layout.target.check(final)


def cached_revision(cache_dir: Path, spec: RepoSpec) -> tuple[Revision, list[tuple[RemoteFile, Path]]]:
    """Resolve ``spec`` from the cache alone: ``refs/<name>`` or a commit with a snapshot folder.

    Returns the revision and every file of its snapshot as (RemoteFile, path);
    the RemoteFile's etag is the blob name, so LFS files carry their sha256.
    """
    storage = Path(cache_dir) / repo_folder_name(spec.repo_id)
    name = spec.revision or "main"
    hint = "it is not in the cache and HF_HUB_OFFLINE is set (unset it to download)"
    if not storage.is_dir():
        raise McardError(f"{spec.repo_id}: {hint}; looked in {storage}")
    ref = storage / "refs" / name
    if COMMIT_RE.match(name.lower()) and (storage / "snapshots" / name.lower()).is_dir():
        rev = Revision(spec.repo_id, name.lower(), "commit", name.lower())
    elif ref.is_file():
        commit = _read_ref(ref)
        if not COMMIT_RE.match(commit):
            raise McardError(f"{spec.repo_id}: {ref} does not hold a commit id")
        rev = Revision(spec.repo_id, name, "branch", commit)
    else:
        known = sorted(str(p.relative_to(storage / "refs")) for p in (storage / "refs").rglob("*") if p.is_file()) \
            if (storage / "refs").is_dir() else []
        raise McardError(f"{spec.repo_id}@{name}: {hint}; cached refs: {', '.join(known) or 'none'}")
    snapshot = storage / "snapshots" / rev.commit
    if not snapshot.is_dir():
        raise McardError(f"{rev}: snapshot folder missing from the cache; {hint}")
    out = []
    for path in sorted(snapshot.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(snapshot).as_posix()
        if not path.exists():
            raise McardError(f"{rev}: cached file {rel} points to a missing blob", path)
        etag = os.path.basename(os.path.realpath(path)) if path.is_symlink() else ""
        sha = etag if SHA256_RE.match(etag) else None
        out.append((RemoteFile(rel, path.stat().st_size, etag if sha is None else "", sha), path))
    return rev, out
