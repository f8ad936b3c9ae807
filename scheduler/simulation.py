"""Driving the same firing, expansion and dispatch code on a controlled clock.

`pingan simulate` and the scheduler tests use this: it walks the campaigns' fire times in
order (from the same APScheduler triggers the live service uses), fires each as the service
would, can leave out a downtime (after which the service's start-up catch-up runs), and lets
the dispatcher send between firings.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from scheduler.campaigns import Campaign
from scheduler.core import Core
from scheduler.logs import get_logger

log = get_logger("scheduler.simulation")


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def set(self, when: dt.datetime) -> None:
        self.now = max(self.now, when)


@dataclass(frozen=True)
class Downtime:
    start: dt.datetime
    end: dt.datetime

    def covers(self, t: dt.datetime) -> bool:
        return self.start <= t < self.end


@dataclass
class Timeline:
    fired: list[tuple[str, dt.datetime]] = field(default_factory=list)
    caught_up: list[tuple[str, dt.datetime]] = field(default_factory=list)
    missed: list[tuple[str, dt.datetime]] = field(default_factory=list)


def merged_fire_times(
    campaigns: list[Campaign], tz: dt.tzinfo, start: dt.datetime, end: dt.datetime
) -> Iterator[tuple[dt.datetime, Campaign]]:
    """Every (time, campaign) firing in (start, end], in time order."""
    streams = [
        ((t, i, c) for t in c.fire_times(tz, start, end))  # type: ignore[arg-type]
        for i, c in enumerate(campaigns)
    ]
    for t, _i, c in heapq.merge(*streams, key=lambda x: (x[0], x[1])):
        yield t, c


def drive(
    core: Core,
    clock: ManualClock,
    start: dt.datetime,
    end: dt.datetime,
    *,
    downtimes: list[Downtime] | None = None,
    between: Callable[[dt.datetime], None] | None = None,
) -> Timeline:
    """Run the scheduler from `start` to `end` on `clock`.

    `between(t)` runs before each clock step to `t` (the simulator dispatches there).
    """
    downtimes = sorted(downtimes or [], key=lambda d: d.start)
    planner = core.planner()
    timeline = Timeline()
    events: list[tuple[dt.datetime, str, Campaign | None]] = [
        (t, "fire", c)
        for t, c in merged_fire_times(core.campaigns.scheduled(), core.settings.tz, start, end)
    ]
    events += [(d.end, "restart", None) for d in downtimes if start < d.end <= end]
    events.sort(key=lambda e: (e[0], 0 if e[1] == "restart" else 1))
    for t, what, campaign in events:
        if between is not None:
            between(t)
        clock.set(t)
        if what == "restart":
            for r in planner.catch_up(t):
                timeline.caught_up.append((str(r.occurrence_id), t))
            continue
        assert campaign is not None
        if any(d.covers(t) for d in downtimes):
            timeline.missed.append((campaign.name, t))
            continue
        planner.fire_scheduled(campaign, t)
        timeline.fired.append((campaign.name, t))
    if between is not None:
        between(end)
    clock.set(end)
    return timeline
