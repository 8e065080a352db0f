"""A whole Hub on loopback: olah for reads plus mcard's write API, over one folder of git repos.

``python -m mcard.testing.hub --root DIR [--port 0] [--token T] [--namespace NS]``
prints the endpoint (the value for ``HF_ENDPOINT``) as its first line, then
serves until SIGTERM or Ctrl-C, when it stops both servers and exits 0.
Writes need ``--token``'s value as the bearer token (without ``--token`` the
hub is read-only); ``--namespace`` limits them to those namespaces (default:
any). Repos live at ``DIR/models/<org>/<name>`` as ordinary git repos with
their LFS objects under ``.git/lfs/objects``.

The write API speaks the LFS protocol, not Xet: run the ``huggingface_hub``
client with ``HF_HUB_DISABLE_XET=1`` against it (``mcard publish`` does so by
itself).

In Python::

    with LocalHub(tmp, token="secret") as hub:
        HfApi(endpoint=hub.endpoint, token="secret").create_repo("me/model")
        hub.stats.lfs_total        # LFS bytes the server received
        hub.faults.drop_commit = "before-ref"   # the next commit fails mid-way
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import TracebackType

from .hub_write import Account, HubWriteServer, WriteFaults, WriteStats
from .hubserver import OlahServer


class LocalHub:
    """olah (reads) behind the write API (writes, and the one public endpoint)."""

    def __init__(self, root: str | Path, token: str | None = None, *, namespaces: tuple[str, ...] = ("*",),
                 user: str = "mcard", accounts: dict[str, Account] | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        tokens = dict(accounts or {})
        if token is not None:
            tokens[token] = Account(user, tuple(namespaces))
        self._tokens, self._host, self._port = tokens, host, port
        self.writer: HubWriteServer | None = None
        self.olah: OlahServer | None = None

    @property
    def endpoint(self) -> str:
        if self.writer is None:
            raise RuntimeError("LocalHub is not running")
        return self.writer.endpoint

    @property
    def stats(self) -> WriteStats:
        assert self.writer is not None
        return self.writer.stats

    @property
    def faults(self) -> WriteFaults:
        assert self.writer is not None
        return self.writer.faults

    def reset_faults(self) -> None:
        assert self.writer is not None
        self.writer.faults.release.set()
        self.writer.faults = WriteFaults()

    def start(self) -> LocalHub:
        if self.writer is not None:
            return self
        writer = HubWriteServer(self.root, self._tokens, host=self._host, port=self._port)
        try:
            self.olah = OlahServer(self.root, host=self._host).start()
        except BaseException:
            writer.server_close()
            raise
        writer.upstream = self.olah.endpoint
        self.writer = writer.start()
        return self

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.stop()
            self.writer = None
        if self.olah is not None:
            self.olah.stop()
            self.olah = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcard.testing.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="folder of repos (DIR/models/<org>/<name>)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--token", help="bearer token that may write (without it the hub is read-only)")
    parser.add_argument("--user", default="mcard", help="the user name the token belongs to")
    parser.add_argument("--namespace", action="append", default=None,
                        help="a namespace the token may write to (repeatable; default: any)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    hub = LocalHub(args.root, args.token, namespaces=tuple(args.namespace or ("*",)), user=args.user,
                   host=args.host, port=args.port)
    try:
        hub.start()
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        print(f"mcard.testing.hub: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        print(hub.endpoint, flush=True)
        print(f"serving {args.root.resolve()} (reads: olah; writes: "
              f"{'with the token' if args.token else 'disabled, no --token'}); stop with SIGTERM",
              file=sys.stderr, flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
