"""Rate limits that hold across dispatcher processes: overall messages per second, and
segments per second per carrier.

A limit is counted per wall-clock second (Unix time) in the database (`rate_slots`, see
scheduler.store.ratelimits), so every dispatcher process, on this machine or another with a
synchronised clock, takes from the same seconds. A dispatcher reserves a whole claimed batch
in one short transaction: each message gets the earliest second with room under every limit
that applies to it, and a place inside that second (the k-th of `rate` goes k/rate into it),
so the sends are spread over the second instead of bunched at its start, and a second's part
already gone by is not handed out. The message is then sent no earlier than its time.

A limit below 1 per second counts as 1 (the unit is the second); a message with more
segments than its carrier's per-second limit takes that carrier's whole second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

OVERALL = "*"

# (limit key, tokens) a message takes.
Need = tuple[tuple[str, int], ...]


def carrier_key(carrier: str) -> str:
    return f"carrier:{carrier}"


@dataclass(frozen=True)
class Limits:
    """The configured limits: messages (numbers, not provider calls) per second overall, and
    segments per second for the carriers named."""

    overall: float
    by_carrier: Mapping[str, float] = field(default_factory=dict)

    def capacities(self) -> dict[str, int]:
        caps = {OVERALL: self.overall, **{carrier_key(c): r for c, r in self.by_carrier.items()}}
        return {k: max(1, math.floor(r)) for k, r in caps.items()}

    def need(self, carrier: str, segments: int) -> Need:
        if carrier in self.by_carrier:
            return ((OVERALL, 1), (carrier_key(carrier), max(1, segments)))
        return ((OVERALL, 1),)


def assign(
    needs: Sequence[Need],
    taken: dict[tuple[str, int], int],
    capacities: Mapping[str, int],
    now: float,
) -> tuple[list[float], set[tuple[str, int]]]:
    """When each message may be sent (Unix time), taking from `taken` ((key, second) →
    tokens taken, updated in place). Returns the times and the (key, second) cells changed."""
    start = math.floor(now)
    into = now - start
    # This second's share already gone by is not handed out (a burst at a second's end would
    # spill into the next one at the provider).
    for key, cap in capacities.items():
        gone = math.ceil(into * cap)
        if taken.get((key, start), 0) < gone:
            taken[(key, start)] = gone
    changed: set[tuple[str, int]] = set()
    # The first second that may still have room, per key.
    low: dict[str, int] = dict.fromkeys(capacities, start)
    times: list[float] = []
    for need in needs:
        sec = max(low[k] for k, _ in need)
        while True:
            fits = True
            offset = 0.0
            for key, n in need:
                cap = capacities[key]
                used = taken.get((key, sec), 0)
                if used >= cap and low[key] == sec:
                    low[key] = sec + 1
                if used + min(n, cap) > cap:
                    fits = False
                    break
                offset = max(offset, used / cap)
            if fits:
                break
            sec += 1
        for key, n in need:
            cell = (key, sec)
            taken[cell] = taken.get(cell, 0) + min(n, capacities[key])
            changed.add(cell)
        times.append(max(now, sec + offset))
    return times, changed
