"""Upload progress for ``mcard publish``: the bytes huggingface_hub reads from each LFS file, as they go.

huggingface_hub streams an LFS object from ``CommitOperationAdd.as_file(with_tqdm=True)`` (one PUT
for basic transfer, one read per part for multipart). :class:`ReportedAdd` answers that call with a
file that tells a :class:`~mcard.hub.progress.Reporter` (the same one ``mcard fetch`` draws) how far
the read has come: reads advance the file's bar and the overall one; a read from another place than
where the last one ended (a retry, the next part) moves them back or on. huggingface_hub's own bars
stay off: on a terminal they showed nothing for LFS basic transfer, and two sets of bars would fight
over the screen.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

from huggingface_hub import CommitOperationAdd

from ..hub.progress import Reporter


class ReportingFile(io.RawIOBase):
    """A binary file opened for reading whose position is reported as it moves."""

    def __init__(self, path: str, name: str, reporter: Reporter) -> None:
        super().__init__()
        self._file = open(path, "rb")
        self._name, self._reporter = name, reporter
        self._reported = 0  # the position the reporter knows

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:  # httpx learns the Content-Length from fstat
        return self._file.fileno()

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)  # reported at the next read (httpx seeks to the end to learn the size)

    def read(self, size: int | None = -1) -> bytes:
        start = self._file.tell()
        if start != self._reported:  # a retry from the start, or the next part of a multipart upload
            self._reporter.file_position(self._name, start)
        data = self._file.read(-1 if size is None else size)
        self._reported = start + len(data)
        if data:
            self._reporter.advance(self._name, len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class ReportedAdd(CommitOperationAdd):
    """A ``CommitOperationAdd`` of a local file whose upload reads are reported (set :attr:`reporter`)."""

    reporter: Reporter | None = None

    @contextlib.contextmanager
    def as_file(self, with_tqdm: bool = False) -> Iterator[Any]:
        if not with_tqdm or self.reporter is None or not isinstance(self.path_or_fileobj, str):
            with super().as_file() as file:
                yield file
            return
        self.reporter.file_started(self.path_in_repo, self.upload_info.size)
        reporting = ReportingFile(self.path_or_fileobj, self.path_in_repo, self.reporter)
        try:
            yield reporting
        finally:
            reporting.close()
            self.reporter.file_done(self.path_in_repo, "sent")
