"""The dispatcher's token buckets, on a controlled clock."""

from __future__ import annotations

import threading

from scheduler.ratelimit import TokenBucket


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeMonotonic()
    bucket = TokenBucket(10, burst=10, monotonic=clock)
    assert all(bucket._wait_for(1) == 0 for _ in range(10))
    assert bucket._wait_for(1) == 0.1  # the 11th token comes after a tenth of a second
    clock.t += 0.5
    assert all(bucket._wait_for(1) == 0 for _ in range(5))
    assert bucket._wait_for(1) > 0


def test_segments_are_taken_as_several_tokens() -> None:
    clock = FakeMonotonic()
    bucket = TokenBucket(100, burst=100, monotonic=clock)
    assert bucket._wait_for(67) == 0
    assert bucket._wait_for(67) > 0  # a second long message waits for the refill


def test_take_gives_up_when_stopped() -> None:
    bucket = TokenBucket(0.001, burst=1)
    assert bucket.take(1)
    stop = threading.Event()
    stop.set()
    assert bucket.take(1, stop) is False
