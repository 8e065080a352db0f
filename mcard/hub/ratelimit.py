"""``--max-rate``: one token bucket shared by every connection of a run.

Each connection calls :meth:`RateLimit.take` with the bytes it has just
received; the call returns at once while the run is under its rate and
sleeps for the excess otherwise. The reading thread sleeping is what slows
the server down: its socket buffer fills and TCP's flow control holds the
sender back, so the cap holds on the wire, not just on disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MIN_BURST = 256 * 1024


class RateLimit:
    """At most ``rate`` bytes per second on average over all callers; bursts up to ``burst`` bytes."""

    def __init__(self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate > 0:
            raise ValueError("a rate limit must be a positive number of bytes per second")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(MIN_BURST, rate / 10))
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()

    def take(self, nbytes: int) -> float:
        """Account for ``nbytes`` just received; sleep as long as needed to keep the rate. Returns the wait."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - nbytes
            self._last = now
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait
