"""Token buckets for the dispatcher: overall messages per second, and segments per carrier."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Thread-safe; `take` blocks until the tokens are there (or `stop` says to give up)."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self._monotonic = monotonic
        self._last = monotonic()
        self._lock = threading.Lock()

    def _wait_for(self, n: float) -> float:
        with self._lock:
            now = self._monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
            self._last = now
            need = min(n, self.capacity)
            if self.tokens >= need:
                self.tokens -= need
                return 0.0
            return (need - self.tokens) / self.rate

    def take(self, n: float = 1.0, stop: threading.Event | None = None) -> bool:
        while True:
            wait = self._wait_for(n)
            if wait <= 0:
                return True
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                time.sleep(wait)
