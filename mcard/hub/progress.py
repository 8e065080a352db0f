"""Progress reporting for downloads: a silent reporter and a rich one (overall bar + one bar per file).

The download code calls a :class:`Reporter` from worker threads; rich's
``Progress`` is thread-safe. The CLI picks :class:`RichReporter` only when
stderr is a terminal and ``--quiet``/``--json`` are not given.
"""

from __future__ import annotations

import threading
from typing import IO, Any, Protocol


class Reporter(Protocol):
    """What the downloader tells about its progress (all methods may be called from threads)."""

    def begin(self, total_bytes: int, files: int) -> None: ...

    def file_started(self, path: str, size: int) -> None: ...

    def file_position(self, path: str, position: int) -> None: ...

    def advance(self, path: str, nbytes: int) -> None: ...

    def file_done(self, path: str, status: str) -> None: ...

    def end(self) -> None: ...


class NullReporter:
    """Reports nothing."""

    def begin(self, total_bytes: int, files: int) -> None:
        pass

    def file_started(self, path: str, size: int) -> None:
        pass

    def file_position(self, path: str, position: int) -> None:
        pass

    def advance(self, path: str, nbytes: int) -> None:
        pass

    def file_done(self, path: str, status: str) -> None:
        pass

    def end(self) -> None:
        pass


class RichReporter:
    """An overall bar (bytes to fetch) plus a transient bar for each file in flight."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        console = Console(file=stream, stderr=stream is None)
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )
        self._lock = threading.Lock()
        self._tasks: dict[str, Any] = {}
        self._positions: dict[str, int] = {}
        self._overall: Any = None

    def begin(self, total_bytes: int, files: int) -> None:
        self._progress.start()
        self._overall = self._progress.add_task(f"total ({files} files)", total=total_bytes)

    def file_started(self, path: str, size: int) -> None:
        from ..core.safetext import markup_safe

        name = markup_safe(path if len(path) <= 40 else "…" + path[-39:])  # a listed name is server text
        with self._lock:
            self._tasks[path] = self._progress.add_task(name, total=size)
            self._positions[path] = 0

    def file_position(self, path: str, position: int) -> None:
        with self._lock:
            task = self._tasks.get(path)
            delta = position - self._positions.get(path, 0)
            self._positions[path] = position
        if task is not None:
            self._progress.update(task, completed=position)
        if self._overall is not None and delta:
            self._progress.advance(self._overall, delta)

    def advance(self, path: str, nbytes: int) -> None:
        with self._lock:
            task = self._tasks.get(path)
            self._positions[path] = self._positions.get(path, 0) + nbytes
        if task is not None:
            self._progress.advance(task, nbytes)
        if self._overall is not None:
            self._progress.advance(self._overall, nbytes)

    def file_done(self, path: str, status: str) -> None:
        with self._lock:
            task = self._tasks.pop(path, None)
            self._positions.pop(path, None)
        if task is not None:
            self._progress.remove_task(task)

    def end(self) -> None:
        self._progress.stop()
