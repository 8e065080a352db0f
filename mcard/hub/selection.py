"""Which files of a revision to fetch: names, ``--include``/``--exclude`` globs, and the pickle policy.

Pickle policy: weights in pickle formats (``.bin``, ``.pt``, ``.pth``,
``.ckpt``, ``.pkl``, ``.pickle``) can run code when loaded. They are skipped
when the selection also holds safetensors (or GGUF/GGML) weights, and a
selection whose only weights are pickles is refused unless ``allow_pickle``.
GGML ``.bin`` files are not pickles; since a file cannot be sniffed before
it is downloaded, a ``.bin`` with ``ggml`` in its name counts as GGML.
A named shard of a gguf-split set (``-00001-of-00003.gguf``) or a raw
``.gguf-split-a`` part brings the rest of its set: one variant.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..core.errors import UnusableInput
from ..core.variant import PICKLE_SUFFIXES
from .model import RemoteFile

SAFE_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".ggml")


def is_ggml_name(path: str) -> bool:
    return "ggml" in path.rsplit("/", 1)[-1].lower()


def is_pickle(path: str) -> bool:
    """True for pickle-format weights, judged by name (a ``ggml`` name is not a pickle)."""
    name = path.rsplit("/", 1)[-1].lower()
    return name.endswith(PICKLE_SUFFIXES) and not is_ggml_name(path)


def is_safe_weights(path: str) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    return (name.endswith(SAFE_WEIGHT_SUFFIXES) or (name.endswith(".bin") and is_ggml_name(path))
            or ".gguf-split-" in name)


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(path, p + "*" if p.endswith("/") else p) for p in patterns)


@dataclass
class Selection:
    """The files to fetch and the files left out on purpose (with the reason)."""

    files: list[RemoteFile]
    skipped: list[tuple[RemoteFile, str]] = field(default_factory=list)


def _short_list(paths: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def select_files(files: Sequence[RemoteFile], where: str, *, names: Sequence[str] = (),
                 include: Sequence[str] = (), exclude: Sequence[str] = (), allow_pickle: bool = False) -> Selection:
    """Apply the selection rules; raise UnusableInput for unknown names, empty or pickle-only selections."""
    by_path = {f.path: f for f in files}
    if names:
        unknown = [n for n in names if n not in by_path]
        if unknown:
            raise UnusableInput(f"{where}: no file {_short_list(unknown)} in this revision "
                                f"({len(by_path)} files; see --dry-run)")
        from ..formats.gguf.split import expand

        # naming one shard of a gguf-split set (or one raw -split-a part) names the whole set
        whole = [p for n in names for p in expand(n, list(by_path))]
        chosen = [by_path[n] for n in dict.fromkeys(whole)]
        named_pickles = [f.path for f in chosen if is_pickle(f.path)]
        if named_pickles and not allow_pickle:
            raise UnusableInput(f"{where}: {_short_list(named_pickles)} is pickle data, which can run code when loaded; "
                                "pass --allow-pickle to download it anyway")
        return Selection(chosen)
    chosen = [f for f in files if (not include or _matches(f.path, include)) and not _matches(f.path, exclude)]
    if not chosen:
        raise UnusableInput(f"{where}: no file matches --include/--exclude ({len(files)} files in this revision)")
    pickles = [f for f in chosen if is_pickle(f.path)]
    if not pickles:
        return Selection(chosen)
    if any(is_safe_weights(f.path) for f in chosen):
        keep = [f for f in chosen if not is_pickle(f.path)]
        return Selection(keep, [(f, "pickle weights skipped: safetensors/GGUF weights are present") for f in pickles])
    if not allow_pickle:
        raise UnusableInput(f"{where}: only pickle weights ({_short_list([f.path for f in pickles])}); pickle files "
                            "can run code when loaded, pass --allow-pickle to download them anyway")
    return Selection(chosen)
