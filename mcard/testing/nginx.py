"""nginx from Debian as a loopback CDN edge: static files with Range, signed URLs, a per-connection rate limit.

:class:`NginxCdn` writes its own configuration into a scratch prefix, starts
``nginx -g 'daemon off; master_process off;'`` (one process, running as the
caller, no privileges dropped or needed) on a free loopback port, and stops it
on exit. It serves the Git LFS objects of the repos under
``<mirrors>/models/<org>/<name>/.git/lfs/objects`` at::

    /repos/<org>/<name>/<sha256>?expires=<unix time>&md5=<signature>

where the signature is nginx's ``secure_link``: the URL-safe base64 (no
padding) of ``md5(f"{expires}{path} {secret}")``, made by :meth:`NginxCdn.sign`.
A missing or wrong signature answers 403, an expired one 410, as the Hub's
signed CDN URLs do. ``limit_rate`` caps every response (``0``: unlimited),
and a ``rate=<bytes per second>`` argument sets another cap for one request
(:meth:`NginxCdn.sign` adds it); single ranges are answered ``206`` with ``Content-Range``, several ranges are
not (``max_ranges 1``).

Every request is logged as one JSON line (:meth:`NginxCdn.requests`): nginx's
connection serial number, the request's number on that connection, method,
path, ``Range``, status, body bytes sent, start and end time, and the
``Authorization`` header as received (empty when none came; the tests assert
that). nginx writes a line when a response is finished, a moment after the
client may have read its last byte, so :meth:`NginxCdn.requests` can wait for
a condition on the lines.

Install nginx with ``apt-get install nginx-light`` (Debian/Ubuntu); the binary
is looked up on ``PATH``, then ``/usr/sbin/nginx``, or taken from
``MCARD_NGINX``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .hubserver import answers, free_port, stop_process

LFS_PATH = "/repos/{repo_id}/{oid}"


def nginx_binary() -> str | None:
    """The nginx executable: ``MCARD_NGINX``, else ``nginx`` on PATH, else ``/usr/sbin/nginx``; None if absent."""
    given = os.environ.get("MCARD_NGINX", "").strip()
    if given:
        return given if os.access(given, os.X_OK) else None
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


@dataclass(frozen=True)
class CdnRequest:
    """One logged request."""

    connection: int  # nginx's serial number of the connection
    number: int  # the request's number on that connection (1, 2, ... with keep-alive)
    method: str
    path: str
    args: str
    range: str
    status: int
    sent: int  # body bytes
    authorization: str
    start: float  # seconds since the epoch
    end: float


_LOG_FORMAT = ('{"conn":$connection,"n":$connection_requests,"method":"$request_method","path":"$uri",'
               '"args":"$args","range":"$http_range","status":$status,"sent":$body_bytes_sent,'
               '"auth":"$http_authorization","end":$msec,"took":$request_time}')


# The LFS object path nginx serves, as a location regex: /repos/<org>/<name>/<oid> (the oid split as git-lfs stores it).
_OBJECT_PATH = ('"^/repos/(?<org>[A-Za-z0-9._-]+)/(?<name>[A-Za-z0-9._-]+)/'
                '(?<a>[0-9a-f]{2})(?<b>[0-9a-f]{2})(?<rest>[0-9a-f]{60})$"')


def _config(prefix: Path, mirrors: Path, port: int, host: str, limit_rate: int, secret: str) -> str:
    temp = "".join(f"    {kind}_temp_path {prefix / 'tmp' / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    objects = f"{mirrors.as_posix()}/models/$org/$name/.git/lfs/objects/$a/$b/$a$b$rest"
    return f"""error_log {prefix / 'error.log'} warn;
pid {prefix / 'nginx.pid'};
events {{ worker_connections 1024; }}
http {{
    log_format mcard escape=json '{_LOG_FORMAT}';
    access_log {prefix / 'access.log'} mcard;
{temp}    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    server {{
        listen {host}:{port} sndbuf=256k;
        server_name cdn;
        limit_rate {limit_rate};
        max_ranges 1;
        location ~ {_OBJECT_PATH} {{
            secure_link $arg_md5,$arg_expires;
            secure_link_md5 "$secure_link_expires$uri {secret}";
            if ($secure_link = "") {{ return 403; }}
            if ($secure_link = "0") {{ return 410; }}
            if ($arg_rate ~ "^[0-9]+$") {{ set $limit_rate $arg_rate; }}
            alias {objects};
        }}
        location / {{ return 404; }}
    }}
}}
"""


class NginxCdn:
    """nginx serving the LFS objects under ``mirrors_dir`` on a free loopback port (see the module docstring).

    ``limit_rate`` is bytes per second per response (0: unlimited). Use it as a
    context manager; ``.endpoint`` is ``http://127.0.0.1:<port>``.
    """

    def __init__(self, mirrors_dir: str | Path, *, limit_rate: int = 0, host: str = "127.0.0.1",
                 startup_timeout: float = 20.0) -> None:
        self.mirrors_dir = Path(mirrors_dir).resolve()
        self.limit_rate = int(limit_rate)
        self.host = host
        self.port = 0
        self.secret = secrets.token_hex(16)
        self.startup_timeout = startup_timeout
        self.prefix = Path(tempfile.mkdtemp(prefix="mcard-nginx-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        if self._proc is None:
            raise RuntimeError("NginxCdn is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.prefix / "access.log"

    def object_path(self, repo_id: str, oid: str) -> str:
        return LFS_PATH.format(repo_id=repo_id, oid=oid)

    def sign(self, path: str, expires: int, rate: int | None = None) -> str:
        """``path?expires=..&md5=..``: the signed form of ``path`` (a URL path), valid until ``expires``;
        ``rate``: this URL's bytes per second per response instead of ``limit_rate`` (0: unlimited)."""
        digest = hashlib.md5(f"{expires}{path} {self.secret}".encode()).digest()
        token = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        return f"{path}?expires={expires}&md5={token}" + ("" if rate is None else f"&rate={int(rate)}")

    def url(self, repo_id: str, oid: str, ttl: float = 3600.0, rate: int | None = None) -> str:
        """The signed URL of an LFS object, valid for ``ttl`` seconds (negative: already expired)."""
        return self.endpoint + self.sign(self.object_path(repo_id, oid), int(time.time() + ttl), rate)

    def start(self) -> NginxCdn:
        if self._proc is not None:
            return self
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light, or set MCARD_NGINX)")
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(3):  # a free port may be taken between the probe and nginx's bind
            port = free_port(self.host)
            conf = self.prefix / "nginx.conf"
            conf.write_text(_config(self.prefix, self.mirrors_dir, port, self.host, self.limit_rate, self.secret))
            out = open(self.prefix / "nginx.out", "wb")
            proc = subprocess.Popen([binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log"),
                                     "-g", "daemon off; master_process off;"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            out.close()
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if answers(self.host, port, "/"):
                    self._proc, self.port = proc, port
                    self.log_path.touch()
                    self.requests(until=bool, timeout=2.0)  # nginx logs the start-up probe a moment later
                    self.clear_log()
                    return self
                time.sleep(0.02)
            stop_process(proc)
            last = "".join(p.read_text(errors="replace")[-1500:] for p in
                           (self.prefix / "nginx.out", self.prefix / "error.log") if p.exists())
        raise RuntimeError(f"nginx did not start: {last.strip() or 'no output'}")

    def stop(self) -> None:
        """Stop nginx (idempotent) and remove its scratch prefix."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> NginxCdn:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- the access log ----------------------------------------------------------------------
    def clear_log(self) -> None:
        """Forget the requests logged so far (the log file is emptied in place; nginx keeps appending)."""
        with open(self.log_path, "r+b") as fh:
            fh.truncate(0)

    def requests(self, until: Callable[[list[CdnRequest]], bool] | None = None,
                 timeout: float = 10.0) -> list[CdnRequest]:
        """The logged requests, oldest first; with ``until``, wait (up to ``timeout``) until it holds for them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._read()
            if until is None or until(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def _read(self) -> list[CdnRequest]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            if not line.strip().lstrip(b"\0"):
                continue
            item = json.loads(line.lstrip(b"\0"))  # truncating in place may leave NULs before the next line
            end = float(item["end"])
            out.append(CdnRequest(int(item["conn"]), int(item["n"]), item["method"], item["path"], item["args"],
                                  item["range"], int(item["status"]), int(item["sent"]), item["auth"],
                                  end - float(item["took"]), end))
        return out
