"""Clients on the guarded transport: mcard's own, and the one huggingface_hub uses on mcard's behalf.

* :func:`open_session` starts a :class:`~mcard.net.guard.NetSession` for one
  endpoint and token, makes it the session huggingface_hub's requests answer
  to while it is open, and gives mcard's own shared ``httpx`` client
  (:meth:`Net.client`) built on the same guard.
* :func:`install_hf_client` (called by :func:`open_session`) sets
  huggingface_hub's client factory once per process: its client keeps
  huggingface_hub's own request hooks and gets the guarded transport. Outside
  any mcard session the guard still bounds time and bytes and removes the
  token from next-page links to a foreign origin, but it does not know the
  endpoint, so other requests keep the Authorization huggingface_hub set
  (mcard code that calls huggingface_hub, such as publishing, opens a session
  with :func:`open_session` to get the strict rule).
* :func:`stream` opens one request of mcard's client with a byte cap and turns
  every non-transport ``httpx`` failure (too many redirects, an invalid URL, a
  body that does not decode) into a one-line :class:`~mcard.core.errors.McardError`;
  transport failures (timeouts, drops) stay ``httpx.TransportError`` so callers
  can retry them.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx

from ..core.errors import UnusableInput
from .guard import CAP_KEY, NetSession, guarded_transport
from .limits import NetLimits

_ACTIVE: list[NetSession] = []
_LOCK = threading.Lock()
_DEFAULT: dict[str, NetSession] = {}
_INSTALLED: list[bool] = []


def transports(module: Any, session_of: Callable[[], NetSession], **options: Any) -> dict[str, Any]:
    """``transport=`` and ``mounts=`` for a client of ``module``: every route, proxied or direct, is guarded.

    A client given its own transport ignores ``HTTP(S)_PROXY``/``ALL_PROXY``/``NO_PROXY``; they are read here
    (as httpx reads them) and each proxy gets a guarded transport of its own.
    """
    try:
        proxies = module._utils.get_environment_proxies()
    except Exception:  # noqa: BLE001 - an httpx without the helper: direct connections only
        proxies = {}
    mounts = {pattern: None if url is None else
              guarded_transport(module, session_of, module.HTTPTransport(proxy=url, **options))
              for pattern, url in proxies.items()}
    return {"transport": guarded_transport(module, session_of, module.HTTPTransport(**options)), "mounts": mounts}


class Net:
    """A session with mcard's own client over its guard (close it, or use :func:`open_session`)."""

    def __init__(self, session: NetSession, max_connections: int = 16) -> None:
        self.session = session
        lim = session.limits
        pool = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = httpx.Client(
            **transports(httpx, lambda: session, limits=pool),
            timeout=httpx.Timeout(lim.read_timeout, connect=lim.connect_timeout),
            follow_redirects=True, max_redirects=lim.max_redirects, headers={"User-Agent": "mcard"},
        )

    def close(self) -> None:
        self.client.close()


@contextlib.contextmanager
def open_session(endpoint: str, token: str | None, limits: NetLimits | None = None,
                 max_connections: int = 16) -> Iterator[Net]:
    """A :class:`Net` for ``endpoint``; huggingface_hub's requests follow its rules while it is open."""
    install_hf_client()
    net = Net(NetSession(endpoint, token, limits), max_connections)
    with _LOCK:
        _ACTIVE.append(net.session)
    try:
        yield net
    finally:
        with _LOCK:
            _ACTIVE.remove(net.session)
        net.close()


def _hf_session() -> NetSession:
    with _LOCK:
        if _ACTIVE:
            return _ACTIVE[-1]
        from huggingface_hub import constants

        endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        if endpoint not in _DEFAULT:  # not a run: per-request rules only, no run deadline or request count
            limits = replace(NetLimits.from_env(), deadline=math.inf, max_requests=sys.maxsize)
            _DEFAULT[endpoint] = NetSession(endpoint, None, limits, strict=False)
        return _DEFAULT[endpoint]


def hf_http_module() -> Any:
    """The httpx-like module huggingface_hub's client is built on (``httpx2`` in 2.x, ``httpx`` in 1.x)."""
    from huggingface_hub.utils import _http

    found = vars(_http)  # huggingface_hub imports one of the two
    return found.get("httpx2") or found["httpx"]


def install_hf_client() -> None:
    """Give huggingface_hub a client on the guarded transport (once per process)."""
    with _LOCK:
        if _INSTALLED:
            return
        _INSTALLED.append(True)
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    module = hf_http_module()
    base = _http.default_client_factory()
    hooks = {k: list(v) for k, v in base.event_hooks.items()}
    base.close()
    lim = NetLimits()

    def factory() -> Any:
        return module.Client(event_hooks=hooks, follow_redirects=True, max_redirects=lim.max_redirects,
                             timeout=module.Timeout(lim.read_timeout, connect=lim.connect_timeout),
                             **transports(module, _hf_session))

    set_client_factory(factory)


@contextlib.contextmanager
def stream(client: httpx.Client, url: str, *, cap: int, headers: dict[str, str] | None = None,
           what: str = "") -> Iterator[httpx.Response]:
    """``GET url`` as a stream whose body may not exceed ``cap`` bytes (see the module docstring)."""
    try:
        with client.stream("GET", url, headers=headers, extensions={CAP_KEY: max(0, int(cap))}) as response:
            yield response
    except httpx.TooManyRedirects:
        raise UnusableInput(f"{what or url}: too many redirects (more than {client.max_redirects})") from None
    except httpx.TransportError:
        raise
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        raise UnusableInput(f"{what or url}: unusable answer: {type(exc).__name__}: {str(exc)[:200]}") from None
