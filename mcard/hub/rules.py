"""The Hub's rules for what may be pushed: size limits, LFS patterns, names of repos, branches and paths.

Each fact lives here once; the packager, the publisher and the loopback test
Hub (:mod:`mcard.testing.hub_write`) all ask this module.

* A file may be at most 50 GB (:data:`MAX_FILE_BYTES`); larger GGUF files are
  split with llama.cpp's ``gguf-split``, larger safetensors are sharded.
* Files of 10 MB and more, binary files and files matching the repo's
  ``.gitattributes`` LFS patterns are stored through Git LFS; smaller text
  files are committed as ordinary git blobs (:func:`upload_mode`).
* New repos start with one commit holding the Hub's default
  ``.gitattributes`` (:data:`DEFAULT_LFS_PATTERNS`).
"""

from __future__ import annotations

import fnmatch
import re

from ..core.errors import UnusableInput

MAX_FILE_BYTES = 50 * 10**9  # the Hub's per-file limit
REGULAR_FILE_LIMIT = 10 * 10**6  # files from this size on go through LFS
MAX_PATH_CHARS = 1000  # generous; git and the Hub accept long paths, clients on Windows do not
FORBIDDEN_FOLDERS = (".git", ".cache", ".huggingface")  # the client refuses the first two; the third is the Hub's

# The LFS patterns of the .gitattributes the Hub writes into a new repo.
DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
    "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)
LFS_ATTRIBUTES = "filter=lfs diff=lfs merge=lfs -text"

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def gitattributes_text(patterns: tuple[str, ...] | list[str] = DEFAULT_LFS_PATTERNS) -> str:
    """A ``.gitattributes`` that stores ``patterns`` through LFS, one line each."""
    return "".join(f"{p} {LFS_ATTRIBUTES}\n" for p in patterns)


def lfs_patterns(gitattributes: str) -> list[str]:
    """The patterns a ``.gitattributes`` text marks ``filter=lfs``."""
    out = []
    for line in gitattributes.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            out.append(parts[0])
    return out


def matches(path: str, pattern: str) -> bool:
    """gitattributes matching: a pattern without ``/`` matches the file name, else the whole path."""
    if "/" not in pattern.strip("/"):
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    pattern = pattern.lstrip("/")
    if fnmatch.fnmatchcase(path, pattern):
        return True
    if "**/" in pattern:  # `**/` also matches zero folders
        return fnmatch.fnmatchcase(path, pattern.replace("**/", ""))
    return False


def upload_mode(path: str, size: int, sample: bytes, patterns: list[str] | tuple[str, ...]) -> str:
    """``"lfs"`` or ``"regular"``, as the Hub decides it for a file about to be committed."""
    if size >= REGULAR_FILE_LIMIT or any(matches(path, p) for p in patterns):
        return "lfs"
    if b"\x00" in sample:
        return "lfs"
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 4:  # not just a character cut at the end of the sample
            return "lfs"
    return "regular"


def check_repo_id(repo_id: str) -> str:
    """``org/name`` with the Hub's characters and lengths; raises :class:`UnusableInput`."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts):
        raise UnusableInput(f"{repo_id!r} is not a valid repo id: expected namespace/name, each 1-96 of "
                            "letters, digits, '.', '_', '-', starting with a letter or digit")
    if any(p.endswith(".git") or ".." in p or "--" in p for p in parts):
        raise UnusableInput(f"{repo_id!r} is not a valid repo id: no '..', '--' or trailing '.git'")
    return repo_id


def check_branch(name: str) -> str:
    """A branch name git and the Hub accept (``git check-ref-format`` rules; no ``refs/`` names)."""
    bad = (not name or name.startswith(("-", "/", "refs/")) or name.endswith(("/", ".", ".lock"))
           or ".." in name or "//" in name or "@{" in name or name == "@" or _BAD_REF.search(name)
           or any(part.startswith(".") for part in name.split("/")))
    if bad:
        raise UnusableInput(f"{name!r} is not a valid branch name")
    return name


def check_path(path: str) -> str:
    """A path inside a repo: relative, no ``..``, no ``.git/`` or ``.cache/`` folder, no backslash."""
    parts = path.split("/")
    problem = None
    if not path or path.startswith("/") or path.endswith("/"):
        problem = "must be a relative file path"
    elif "\\" in path or any(ord(c) < 32 for c in path):
        problem = "contains a backslash or a control character"
    elif any(p in ("", ".", "..") for p in parts):
        problem = "has an empty, '.' or '..' segment"
    elif any(p in FORBIDDEN_FOLDERS for p in parts[:-1]):
        problem = f"is inside a folder the Hub refuses ({', '.join(FORBIDDEN_FOLDERS)})"
    elif len(path) > MAX_PATH_CHARS:
        problem = f"is longer than {MAX_PATH_CHARS} characters"
    if problem:
        raise UnusableInput(f"path {path!r} {problem}")
    return path
