"""Plain data shared by the hub modules: a file in a tree listing, a resolved revision, safe paths."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.errors import UnusableInput

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
MAX_LISTED_SIZE = 1 << 41  # 2 TiB: far above any Hub file, far below what a file system refuses
MAX_NAME_BYTES = 255  # one path component (the limit of common file systems)
MAX_PATH_BYTES = 1024  # a whole path in a repo


@dataclass(frozen=True)
class RemoteFile:
    """One file of a revision as the tree listing describes it."""

    path: str
    size: int
    blob_id: str  # git blob id of what is committed (the pointer, for LFS files)
    sha256: str | None = None  # LFS files only

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def etag(self) -> str:
        """The blob name in the HF cache: sha256 for LFS files, git blob id for the others."""
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class Revision:
    """A revision pinned to a commit: ``name`` is the branch, tag or commit asked for."""

    repo_id: str
    name: str
    kind: str  # "branch", "tag" or "commit"
    commit: str

    def __str__(self) -> str:
        short = self.commit[:10]
        return f"{self.repo_id}@{self.name}" + ("" if self.kind == "commit" else f" (commit {short})")


def safe_relpath(path: str, where: str) -> str:
    """Return ``path`` if it is a plain relative path inside its folder; raise UnusableInput otherwise.

    Refuses absolute paths, drive letters, backslashes, empty, ``.`` and ``..``
    components, control characters, components over 255 bytes and paths over
    1024 bytes: a listing from a hostile server must not place a file outside
    the target folder, nor name one the file system cannot create.
    """
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise UnusableInput(f"refusing a path of {len(path)} characters from the server listing "
                            f"(limit {MAX_PATH_BYTES} bytes): {path[:80]!r}...", where)
    parts = path.split("/")
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for p in parts):
        raise UnusableInput(f"refusing a path with a name over {MAX_NAME_BYTES} bytes from the server listing: "
                            f"{path[:80]!r}...", where)
    bad = (
        not path
        or path.startswith("/")
        or "\\" in path
        or re.match(r"^[A-Za-z]:", path) is not None
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 32 for c in path)
    )
    if bad:
        raise UnusableInput(f"refusing unsafe path from the server listing: {path!r}", where)
    return path


def check_listing(files: list[RemoteFile], where: str) -> list[RemoteFile]:
    """Refuse a listing where a file is also the folder of another (``a`` and ``a/b``)."""
    names = {f.path for f in files}
    for f in files:
        parts = f.path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in names:
                raise UnusableInput(f"the server listing has {'/'.join(parts[:i])!r} both as a file and as the "
                                    f"folder of {f.path!r}", where)
    return files
