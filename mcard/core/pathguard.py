"""One guard for everything mcard writes under a target folder: final files and bookkeeping alike.

A :class:`Target` is a folder mcard writes into (``fetch --local-dir DIR``,
the HF cache, a sparse mirror, a sync report folder). Every path it hands out
has been checked, and every file it opens for writing is opened without
following a symlink:

* **folders**: each existing component between the target and the path must
  resolve inside the target (``DIR/.cache -> /elsewhere``, an HF cache whose
  ``blobs``, ``snapshots`` or ``.locks`` point out of it: refused), checked
  again after the folders are created;
* **files**: opened with ``O_NOFOLLOW`` (a pre-placed ``x.incomplete`` or
  ``x.lock`` symlink to an outside file is refused, never appended to or
  truncated), written atomically through a temporary name where asked;
* **locks**: ``fcntl.flock`` on a file opened the same way (the lock files
  huggingface_hub uses, so both tools exclude each other).

Refusals are :class:`~mcard.core.errors.UnusableInput` naming the path (exit 2).
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import UnusableInput

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _within(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class Target:
    """A folder mcard writes into; see the module docstring."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def real_root(self) -> str:
        return os.path.realpath(self.root)

    def check(self, path: str | Path) -> Path:
        """``path`` (under the target) after checking that its existing folders resolve inside the target."""
        path = Path(path)
        real_root = self.real_root
        try:
            rel = Path(os.path.relpath(path, self.root))
        except ValueError:  # another drive on Windows
            rel = Path("..")
        if rel.parts[:1] == ("..",) or rel.is_absolute():
            raise UnusableInput(f"refusing to write outside {self.root}", path)
        probe = self.root
        for part in rel.parts[:-1]:
            probe = probe / part
            if not os.path.lexists(probe):
                break
            real = os.path.realpath(probe)
            if not _within(real, real_root):
                raise UnusableInput(f"refusing to write outside {self.root}: {probe} leads to {real}", path)
            if not os.path.isdir(probe):
                raise UnusableInput(f"{probe} is in the way: a file where a folder is needed", path)
        return path

    def child(self, relpath: str) -> Path:
        """``root/relpath`` (a ``/``-separated relative path), checked."""
        return self.check(self.root.joinpath(*relpath.split("/")))

    def mkdirs(self, folder: str | Path) -> Path:
        """Create ``folder`` and its parents under the target, refusing any step that leads outside."""
        folder = Path(folder)
        self.check(folder / "_")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise UnusableInput(f"{folder} is in the way: a file where a folder is needed", folder) from None
        except OSError as exc:
            raise UnusableInput(f"cannot create the folder: {exc.strerror or exc}", folder) from None
        self.check(folder / "_")  # again, now that the folders exist
        return folder

    def open_fd(self, path: str | Path, flags: int, mode: int = 0o644) -> int:
        """``os.open`` of a checked path with ``O_NOFOLLOW``; a symlink in its place is refused."""
        path = self.check(path)
        try:
            return os.open(path, flags | NOFOLLOW | CLOEXEC, mode)
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(path):
                raise UnusableInput(f"refusing to open a symlink for writing ({os.readlink(path)!r})", path) from None
            raise

    def open(self, path: str | Path, mode: str = "wb"):
        """A binary file object for ``"rb"``, ``"wb"``, ``"ab"`` or ``"r+b"``, opened without following symlinks."""
        flags = {"rb": os.O_RDONLY, "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "r+b": os.O_RDWR}[mode]
        return os.fdopen(self.open_fd(path, flags), mode)

    def write_atomic(self, path: str | Path, data: bytes | str) -> Path:
        """Write ``data`` to a fresh temporary name beside ``path``, then rename it over ``path``."""
        path = Path(path)
        self.mkdirs(path.parent)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        with self.open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
        return path

    @contextlib.contextmanager
    def lock(self, path: str | Path) -> Iterator[None]:
        """An exclusive lock on ``path`` (created if needed, never through a symlink)."""
        path = Path(path)
        self.mkdirs(path.parent)
        fd = self.open_fd(path, os.O_RDWR | os.O_CREAT)
        try:
            try:
                import fcntl
            except ImportError:  # Windows: filelock on the checked path
                os.close(fd)
                fd = -1
                from filelock import FileLock

                with FileLock(str(path)):
                    yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            if fd >= 0:
                os.close(fd)
