"""``mcard validate REPO[:BRANCH]``: validate a Hub revision from a few byte ranges, before downloading it.

The ordinary validator (:func:`mcard.core.validate.inspect`) runs unchanged on a
*sparse local mirror* of the revision, built in a temporary folder (or
``mirror=DIR`` to keep it):

* small files (configs, ``*.json``, tokenizer files; anything under 10 MB that
  is not a weights file) are downloaded whole and verified against the listing's
  hashes (:meth:`HubClient.get_small`);
* every weights file is created as a sparse file of its exact listed size, and
  only the byte ranges validate reads are written into it, fetched with
  ``Range: bytes=a-b`` from ``{endpoint}/{repo}/resolve/{commit}/{path}``:

  - all: the first 64 KiB (1 MiB for ``.gguf``): magic bytes and most headers;
  - safetensors: ``[8, 8 + n)`` when the JSON header is longer than that, then
    the tensors whose values the format's ``check`` reads, listed by the format
    spec's ``validate_reads`` suffixes (GPTQ ``g_idx``/``qzeros``, bnb code
    books and quant_state JSON), coalesced when less than 64 KiB apart;
  - the other kinds, by their format spec's ``remote_reads`` (``mcard/formats/<name>/``):
  - GGUF: a prefix doubled from 1 MiB up to 64 MiB until
    :func:`mcard.formats.gguf.header.read` parses it as a file of its own (its
    bounded reader raises on any read past the end, so success means the whole
    header lies in the prefix and parses exactly as in the full file);
  - legacy GGML: the vocabulary, then each tensor header, hopping over the data
    (one request per tensor: they interleave with the data);
  - pickle checkpoints: what :func:`mcard.formats.pickled.scan` reads: the zip's
    end record and central directory, then the ``data.pkl`` member (or, for a
    bare pickle, its opcodes up to the first STOP). Never unpickled.

Sizes come from the listing, so a truncated upload fails ``file-size`` remotely.
Requests run on a pool of 8 threads over one keep-alive client. A server that
ignores Range (answers 200, as olah does) is handled by reading the body up to
the bytes needed and closing it: correct, but offsets far into a file then
stream through (counted in ``bytes_read``).
"""

from __future__ import annotations

import contextlib
import functools
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..core.errors import McardError, UnusableInput
from ..core.report import Report
from ..core.safetensors_io import MAX_HEADER_BYTES
from ..core.variant import PICKLE_SUFFIXES
from ..formats.spec import FormatSpec
from .env import resolve_env
from .model import RemoteFile, Revision
from .ranges import COALESCE_GAP, HEAD_BYTES, RangeReader, SparseMirror, coalesce
from .refs import RepoSpec, parse_repo_spec
from .remote import HubClient

SMALL_WHOLE = 10 * 1000 * 1000  # non-weights files below this are downloaded whole
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".ggml", *PICKLE_SUFFIXES, ".h5", ".msgpack", ".onnx", ".npy", ".npz")
WORKERS = 8


def tensors_validate_reads(spec: FormatSpec, tensors: dict[str, tuple[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """File -> byte ranges of the tensors whose values the format's ``check`` reads (``spec.validate_reads``)."""
    suffixes = spec.validate_reads
    out: dict[str, list[tuple[int, int]]] = {}
    if not suffixes:
        return out
    for name, (rel, info) in tensors.items():
        if name.endswith(suffixes) and 0 <= info.begin <= info.end:
            out.setdefault(rel, []).append((info.begin, info.end))
    return out


# -- per-kind readers: fetch exactly what the format's reader will read ---------------------------------
# safetensors is the container of several formats, read here; the other kinds' readers are their format
# spec's remote_reads (mcard/formats/<name>/: GGUF's header prefix, GGML's tensor headers, pickle's zip).
def _safetensors_header(mirror: SparseMirror, rf: RemoteFile, head: bytes) -> None:
    if len(head) < 8:
        return
    (n,) = struct.unpack("<Q", head[:8])
    if n <= MAX_HEADER_BYTES and 8 + n <= rf.size and 8 + n > len(head):
        mirror.fetch(rf, len(head), 8 + n)


# -- the driver -------------------------------------------------------------------------------------
def _head_bytes(path: str) -> int:
    """The first read of a weights file: :data:`HEAD_BYTES`, or what its format asks for files so named
    (a GGUF header holds the vocabulary: 1 MiB)."""
    from .. import formats

    sizes = [n for spec in formats.specs() for suffix, n in spec.remote_heads if path.endswith(suffix)]
    return max(sizes) if sizes else HEAD_BYTES


def _is_sparse(rf: RemoteFile) -> bool:
    return rf.path.endswith(WEIGHT_SUFFIXES) or rf.size >= SMALL_WHOLE


def _run(pool: ThreadPoolExecutor, tasks: Sequence[Callable[[], Any]]) -> list[Any]:
    futures = [pool.submit(t) for t in tasks]
    return [f.result() for f in futures]


def build_mirror(client: HubClient, rev: Revision, files: list[RemoteFile], root: Path, scratch: Path,
                 reader: RangeReader) -> None:
    """Write the sparse mirror of ``rev`` under ``root`` (see the module docstring)."""
    from .. import formats
    from ..core.variant import Variant, sniff

    mirror = SparseMirror(root, reader)
    readers = {kind: spec for spec in formats.specs() for kind in spec.file_kinds}
    sparse = [rf for rf in files if _is_sparse(rf)]
    whole = [rf for rf in files if not _is_sparse(rf)]
    for rf in files:
        mirror.create(rf)
    heads: dict[str, bytes] = {}

    def get_whole(rf: RemoteFile) -> None:
        data = client.get_small(rev, rf, limit=SMALL_WHOLE)
        reader.count(len(data), 1)
        mirror.write(rf, 0, data)

    def get_head(rf: RemoteFile) -> None:
        heads[rf.path] = mirror.fetch(rf, 0, _head_bytes(rf.path))

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="mcard-range") as pool:
        _run(pool, [functools.partial(get_whole, rf) for rf in whole if rf.size]
             + [functools.partial(get_head, rf) for rf in sparse if rf.size])
        tasks: list[Callable[[], Any]] = []
        for rf in sparse:
            head = heads.get(rf.path, b"")
            kind = sniff(mirror.path(rf))
            if kind == "safetensors":
                tasks.append(functools.partial(_safetensors_header, mirror, rf, head))
            elif kind in readers:
                tasks.append(functools.partial(readers[kind].remote_reads, mirror, rf, head, scratch))
        _run(pool, tasks)

        # the small tensors the owning format's check reads, by the format module's own list
        try:
            variant = Variant.open(root)
            spec = formats.detect(variant)
            wanted = tensors_validate_reads(spec, variant.tensors) if spec is not None else {}
        except McardError:  # an unreadable header or config: validate reports it next
            return
        by_path = {rf.path: rf for rf in files}
        jobs: list[Callable[[], Any]] = []
        for rel, ranges in wanted.items():
            header, found = variant.headers[rel], by_path.get(rel)
            if found is None:
                continue
            # a server that ignores Range streams from byte 0 anyway: then one request per file
            gap = found.size if reader.ignored_range else COALESCE_GAP
            todo = [m for a, b in ranges for m in mirror.missing(found, header.data_start + a, header.data_start + b)]
            for a, b in coalesce(todo, gap):
                if a < found.size:
                    jobs.append(functools.partial(mirror.fetch, found, a, b))
        _run(pool, jobs)


@contextlib.contextmanager
def _mirror_root(mirror: str | Path | None) -> Iterator[Path]:
    if mirror is None:
        with tempfile.TemporaryDirectory(prefix="mcard-mirror-") as tmp:
            yield Path(tmp)
        return
    root = Path(mirror)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UnusableInput("--mirror must be a new or empty folder", root)
    root.mkdir(parents=True, exist_ok=True)
    yield root


def _relabel(exc: McardError, root: Path, label: str) -> McardError:
    """The same error with the mirror's local path replaced by ``repo@commit/file``."""
    if not exc.path or not exc.path.startswith(str(root)):
        return exc
    rel = Path(exc.path).relative_to(root).as_posix()
    return type(exc)(exc.message, label if rel == "." else f"{label}/{rel}")


def inspect_remote(spec: str | RepoSpec, revision: str | None = None, endpoint: str | None = None,
                   token: str | None = None, mirror: str | Path | None = None) -> Report:
    """Validate ``REPO[:BRANCH]`` (or a Hub URL) on the Hub from headers and small tensors only.

    Returns the :class:`Report` :func:`mcard.core.validate.inspect` gives for the
    downloaded files, with ``path`` = ``repo@commit`` and ``remote`` holding
    ``repo``, ``revision``, ``kind``, ``commit``, ``bytes_read``, ``requests``,
    ``total_bytes``, ``range_supported`` and ``mirror`` (when kept). Raises
    :class:`UnusableInput` for an unknown repo or revision (listing the branches).
    """
    from ..core.validate import inspect

    if isinstance(spec, RepoSpec):
        spec = parse_repo_spec(spec.repo_id + (f":{spec.revision}" if spec.revision else ""), revision)
    else:
        spec = parse_repo_spec(spec, revision)
    env = resolve_env(endpoint=endpoint, token=token)
    if env.offline:
        raise UnusableInput("HF_HUB_OFFLINE is set: validating a Hub repo needs the Hub; "
                            "validate a downloaded folder instead")
    with HubClient(env, max_connections=WORKERS) as client:
        rev = client.resolve(spec)
        files = client.list_files(rev)
        if not files:
            raise UnusableInput(f"{rev}: the revision holds no files")
        label = f"{rev.repo_id}@{rev.commit}"
        reader = RangeReader(client, rev)
        with _mirror_root(mirror) as root, tempfile.TemporaryDirectory(prefix="mcard-probe-") as scratch:
            try:
                build_mirror(client, rev, files, root, Path(scratch), reader)
                report = inspect(root)
            except McardError as exc:
                raise _relabel(exc, root, label) from None
            except OSError as exc:  # a full TMPDIR, a file size the file system refuses
                raise McardError(f"cannot write the sparse mirror in {root}: {exc.strerror or exc}", label) from None
            report.path = label
            for part in report.parts:
                with contextlib.suppress(ValueError):
                    part.path = f"{label}/{Path(part.path).relative_to(root).as_posix()}"
    report.remote = {
        "repo": rev.repo_id, "revision": rev.name, "kind": rev.kind, "commit": rev.commit,
        "endpoint": env.endpoint, "bytes_read": reader.bytes_read, "requests": reader.requests,
        "total_bytes": sum(rf.size for rf in files), "files": len(files),
        "range_supported": not reader.ignored_range, "mirror": str(Path(mirror).resolve()) if mirror else None,
    }
    return report
