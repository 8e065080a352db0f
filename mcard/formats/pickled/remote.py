"""Remote validate for pickle checkpoints: what :func:`~mcard.formats.pickled.scan` reads, fetched."""

from __future__ import annotations

import pickletools
import zipfile
from typing import Any, BinaryIO, cast

from ...core.errors import UnusableInput
from . import MAX_PICKLE_BYTES, MAX_ZIP_DIRECTORY


def fetch_scanned(mirror: Any, rf: Any, head: bytes) -> None:
    """The zip's end record and central directory, then the ``data.pkl`` member (or, for a bare pickle,
    its opcodes up to the first STOP). Never unpickled."""
    from ...hub.ranges import LazyRemoteFile

    f = LazyRemoteFile(mirror, rf, head, limit=None)
    try:
        if zipfile.is_zipfile(f):
            f.seek(0)
            end = zipfile._EndRecData(f)  # type: ignore[attr-defined]  # private: zipfile's own end-record parser
            claimed = end[zipfile._ECD_SIZE] if end else 0  # type: ignore[attr-defined]  # private, as above
            if claimed > MAX_ZIP_DIRECTORY:
                raise UnusableInput(f"the zip end record claims a {claimed}-byte central "
                                    f"directory (limit {MAX_ZIP_DIRECTORY}); refused", rf.path)
            with zipfile.ZipFile(f) as zf:
                pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if pkl is not None and zf.getinfo(pkl).file_size <= MAX_PICKLE_BYTES:
                    zf.read(pkl)
        else:
            bare = LazyRemoteFile(mirror, rf, head, limit=MAX_PICKLE_BYTES)
            try:
                for op, _arg, _pos in pickletools.genops(cast(BinaryIO, bare)):  # a read-only binary file
                    if op.name == "STOP":
                        break
            except Exception:  # noqa: BLE001 - a truncated or legacy stream: scan says what it sees
                pass
            finally:
                bare.to_mirror()
    except UnusableInput:  # a walk over its budget: refused, not followed
        raise
    except Exception:  # noqa: BLE001 - a broken zip: scan reports it from the bytes fetched
        pass
    finally:
        f.to_mirror()
