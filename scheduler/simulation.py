"""Driving the same firing, expansion and dispatch code on a controlled clock.

`pingan simulate` and the scheduler tests use this: it walks the campaigns' fire times in
order (from the same APScheduler triggers the live service uses), fires each as the service
would, can leave out a downtime (after which the service's start-up catch-up runs), and lets
the dispatcher send between firings.
"""

from __future__ import annotations

import datetime as dt
import heapq
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.triggers.base import BaseTrigger

from scheduler.campaigns import Campaign
from scheduler.core import Core
from scheduler.logs import get_logger
from scheduler.settings import Settings

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

    def stream(i: int, c: Campaign) -> Iterator[tuple[dt.datetime, int, Campaign]]:
        for t in c.fire_times(tz, start, end):  # type: ignore[arg-type]
            yield t, i, c

    streams = [stream(i, c) for i, c in enumerate(campaigns)]
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
    tasks: list[tuple[BaseTrigger, Callable[[dt.datetime], None]]] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Timeline:
    """Run the scheduler from `start` to `end` on `clock`.

    `between(t)` runs before each clock step to `t` (the simulator dispatches there); `tasks`
    are the service's housekeeping jobs (the quota check), run at their triggers' times;
    `on_progress(done, total)` hears of each clock step (a CLI progress bar).
    """
    downtimes = sorted(downtimes or [], key=lambda d: d.start)
    planner = core.planner()
    timeline = Timeline()
    events: list[tuple[dt.datetime, str, Campaign | None]] = [
        (t, "fire", c)
        for t, c in merged_fire_times(core.campaigns.scheduled(), core.settings.tz, start, end)
    ]
    events += [(d.end, "restart", None) for d in downtimes if start < d.end <= end]
    task_events: list[tuple[dt.datetime, Callable[[dt.datetime], None]]] = []
    for trigger, fn in tasks or []:
        previous: dt.datetime | None = None
        now = start
        while (t := trigger.get_next_fire_time(previous, now)) is not None and t <= end:
            task_events.append((t, fn))
            previous, now = t, t + dt.timedelta(microseconds=1)
    events += [(t, f"task:{i}", None) for i, (t, _fn) in enumerate(task_events)]
    events.sort(key=lambda e: (e[0], 0 if e[1] == "restart" else 1))
    for step, (t, what, campaign) in enumerate(events):
        if on_progress is not None:
            on_progress(step, len(events))
        if between is not None:
            between(t)
        clock.set(t)
        if what.startswith("task:"):
            if not any(d.covers(t) for d in downtimes):
                task_events[int(what[5:])][1](t)
            continue
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
    if on_progress is not None:
        on_progress(len(events), len(events))
    return timeline


@dataclass
class SimulationResult:
    start: dt.datetime
    end: dt.datetime
    timeline: Timeline
    statuses: list[Any]
    messages: dict[str, int]
    topups: list[dict[str, Any]]
    recipients: int
    elapsed_seconds: float

    @property
    def unmet(self) -> list[Any]:
        """(rule status, row) pairs whose window ended short of target."""
        out = []
        for st in self.statuses:
            for row in st.rows:
                if str(row.status) != "met":
                    out.append((st, row))
        return out


def simulate(
    settings: Settings,
    *,
    start_day: dt.date,
    end_day: dt.date,
    recipients_file: Path,
    seed: int = 1,
    scratch: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SimulationResult:
    """Run the configured plan over a simulated clock in a scratch database, dry-run provider.

    The same planner, expansion, dispatcher and quota code as the service; top-ups fire on the
    quota check day as they would live. Returns every rule's attainment for each window that
    ended within the period.
    """
    began = time.perf_counter()
    # A folder the caller names is kept (to look at the database afterwards); our own temp
    # folder (hundreds of MB for a quarter) is removed when the run ends.
    workdir = scratch or Path(tempfile.mkdtemp(prefix="pingan-sim-"))
    try:
        return _simulate_in(
            settings, start_day, end_day, recipients_file, seed, workdir, began, on_progress
        )
    finally:
        if scratch is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _simulate_in(
    settings: Settings,
    start_day: dt.date,
    end_day: dt.date,
    recipients_file: Path,
    seed: int,
    workdir: Path,
    began: float,
    on_progress: Callable[[int, int], None] | None = None,
) -> SimulationResult:
    from scheduler.dispatcher import build_dispatcher
    from scheduler.quotas import load_rules, status, windows
    from scheduler.recipients import import_recipients
    from scheduler.store.delivery import state_counts
    from scheduler.topups import check_quotas, check_trigger

    tz = settings.tz
    start = dt.datetime.combine(start_day, dt.time(0), tz)
    end = dt.datetime.combine(end_day, dt.time(23, 59, 59), tz)
    workdir.mkdir(parents=True, exist_ok=True)
    db_file = workdir / "simulation.db"
    db_file.unlink(missing_ok=True)
    sim_settings = settings.model_copy(
        update={
            "database_url": f"sqlite:///{db_file}",
            "data_dir": workdir,
            "provider": "dryrun",
            # A scratch database thrown away afterwards: no fsync, no provider log.
            "sqlite_synchronous": "off",
            "dryrun": settings.dryrun.model_copy(update={"seed": seed, "write_log": False}),
            "dispatch": settings.dispatch.model_copy(
                update={
                    "rate_per_second": 1e9,
                    "segment_rate_by_carrier": {},
                    "batch_size": 5000,
                    "concurrency": 1,
                }
            ),
        }
    )
    clock = ManualClock(start)
    core = Core(sim_settings, clock=clock)
    imported = import_recipients(core.engine, core.district, recipients_file)
    dispatcher = build_dispatcher(core)
    topups: list[dict[str, Any]] = []

    def send_due(_t: dt.datetime) -> None:
        dispatcher.run(until_empty=True)

    def quota_check(t: dt.datetime) -> None:
        topups.extend(check_quotas(core, t))

    trigger = check_trigger(sim_settings.quota_check, tz)
    try:
        timeline = drive(
            core,
            clock,
            start,
            end,
            between=send_due,
            tasks=[(trigger, quota_check)],
            on_progress=on_progress,
        )
        rules = load_rules(sim_settings.config_dir, core.district)
        pairs = [
            (r, w)
            for r in rules
            for w in windows(r, tz=tz)
            if w.start >= start_day and w.end <= end_day
        ]
        statuses = status(core.engine, pairs, core.district, now=end, tz=tz)
        counts = state_counts(core.engine)
    finally:
        dispatcher.close()
        core.close()
    return SimulationResult(
        start=start,
        end=end,
        timeline=timeline,
        statuses=statuses,
        messages=counts,
        topups=topups,
        recipients=imported,
        elapsed_seconds=time.perf_counter() - began,
    )
