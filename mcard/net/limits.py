"""The numbers that bound every request mcard makes (and every request huggingface_hub makes for it).

Each limit has a default here and an environment override read when a
session starts (never at import). They are documented in docs/hub.md
("Limits on servers and inputs"); change both together.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

from ..errors import UnusableInput

MIB = 1024 * 1024


@dataclass(frozen=True)
class NetLimits:
    """Timeouts, byte and request caps of one session (one command run)."""

    connect_timeout: float = 15.0  # seconds to open a connection
    read_timeout: float = 60.0  # seconds without a byte from the server
    response_seconds: float = 300.0  # a whole metadata response (refs, a tree page, an error body)
    deadline: float = 24 * 3600.0  # the whole session: no request starts, and none waits, past it
    api_body_bytes: int = 32 * MIB  # a metadata response, after decoding
    max_redirects: int = 5  # hops of one request, each checked by the host rule
    max_pages: int = 1000  # pages of one paginated listing
    max_entries: int = 200_000  # entries of one tree listing
    max_requests: int = 200_000  # requests of one session

    @classmethod
    def from_env(cls) -> "NetLimits":
        """The defaults, with ``MCARD_CONNECT_TIMEOUT``, ``MCARD_READ_TIMEOUT`` and ``MCARD_DEADLINE`` applied."""
        out = cls()
        for var, name in (("MCARD_CONNECT_TIMEOUT", "connect_timeout"), ("MCARD_READ_TIMEOUT", "read_timeout"),
                          ("MCARD_DEADLINE", "deadline")):
            text = os.environ.get(var, "").strip()
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                value = -1.0
            if not math.isfinite(value) or value <= 0:
                raise UnusableInput(f"{var}={text!r}: expected a positive number of seconds")
            out = replace(out, **{name: value})
        return out
