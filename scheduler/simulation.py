"""The service's loop on a controlled clock.

`pingan simulate` and the scheduler tests use this: it walks the job table the live service
runs (`scheduler.loop`: campaigns, the quota check and its top-ups, the monthly report on its
due day) through simulated time in burst mode, can leave out a downtime (after which the
service's start-up catch-up runs), and lets the dispatcher drain the outbox after each step.
"""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.triggers.base import BaseTrigger

from scheduler.core import Core
from scheduler.logs import get_logger
from scheduler.loop import Loop
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


def _due_times(trigger: BaseTrigger, start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    """A trigger's fire times in (start, end], as APScheduler would wake for them."""
    previous: dt.datetime | None = None
    now = start + dt.timedelta(microseconds=1)
    while (t := trigger.get_next_fire_time(previous, now)) is not None and t <= end:
        if t > start:
            yield t
        previous, now = t, t + dt.timedelta(microseconds=1)


def drive(
    core: Core,
    clock: ManualClock,
    start: dt.datetime,
    end: dt.datetime,
    *,
    downtimes: list[Downtime] | None = None,
    dispatch: Callable[[dt.datetime], None] | None = None,
    loop: Loop | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Timeline:
    """Run the service's job table (`scheduler.loop`) from `start` to `end` on `clock`, in
    burst mode: move the clock to the next due job, run every job due then, `dispatch(t)`
    until the outbox is empty, repeat.

    A downtime skips the jobs due in it; at its end the service's start-up catch-up runs.
    `on_progress(done, total)` hears of each clock step (a CLI progress bar).
    """
    downtimes = sorted(downtimes or [], key=lambda d: d.start)
    loop = loop or Loop(core)
    timeline = Timeline()
    table = loop.jobs()
    # (time, order, job index): a restart runs before the jobs due at the same time, and the
    # jobs due together run in table order (campaigns, the quota check, the report).
    restart = -1
    steps = [(t, i, i) for i, job in enumerate(table) for t in _due_times(job.trigger, start, end)]
    steps += [(d.end, restart, restart) for d in downtimes if start < d.end <= end]
    steps.sort()
    times = sorted({t for t, _o, _i in steps})
    done = 0
    for t, group in itertools.groupby(steps, key=lambda s: s[0]):
        if on_progress is not None:
            on_progress(done, len(times))
        clock.set(t)
        down = any(d.covers(t) for d in downtimes)
        for _t, _order, index in group:
            if index == restart:
                for r in loop.catch_up():
                    timeline.caught_up.append((str(r.occurrence_id), t))
                continue
            job = table[index]
            if down:
                if job.campaign is not None:
                    timeline.missed.append((job.campaign, t))
                continue
            job.run(loop)
            if job.campaign is not None:
                timeline.fired.append((job.campaign, t))
        if dispatch is not None:
            dispatch(t)
        done += 1
    clock.set(end)
    if on_progress is not None:
        on_progress(len(times), len(times))
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
    # The monthly reports the loop's report job wrote, (due day, path).
    reports: list[tuple[dt.date, str]] = field(default_factory=list)

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

    The service's own loop: the same jobs (campaigns, quota check and top-ups, the monthly
    report on its due day, written into the scratch folder), planner, expansion, dispatcher
    and quota code. Returns every rule's attainment for each window that
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
            # The monthly reports the loop writes on their due days land beside the database.
            "reports_dir": workdir,
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

    def send_due(_t: dt.datetime) -> None:
        dispatcher.run(until_empty=True)

    try:
        loop = Loop(core)
        timeline = drive(
            core, clock, start, end, dispatch=send_due, loop=loop, on_progress=on_progress
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
        topups=loop.topups,
        recipients=imported,
        reports=loop.reports,
        elapsed_seconds=time.perf_counter() - began,
    )
