"""Errors and the exit codes every command shares.

Exit codes (documented in the README):

* 0 ``EXIT_OK``: the check passed.
* 1 ``EXIT_FAILED``: the check ran and failed (a validation error, a hash mismatch).
* 2 ``EXIT_UNUSABLE``: the input could not be used at all (unreadable file, bad usage).
* 3 ``EXIT_NO_GPU``: ``smoke --require-gpu`` found no usable GPU.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 2
EXIT_NO_GPU = 3


class McardError(Exception):
    """Base class of the errors mcard reports as one line and an exit code."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class UnusableInput(McardError):
    """The input cannot be read or understood at all (exit 2)."""

    exit_code = EXIT_UNUSABLE


class CheckFailed(McardError):
    """A check ran and failed (exit 1)."""

    exit_code = EXIT_FAILED
