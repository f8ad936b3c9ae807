"""The scheduler loop, defined once: the job table and what each job does.

A job is what runs, when (an APScheduler trigger) and the function. The live service hands the
table to APScheduler (`scheduler.service`); the simulator walks the same table through
simulated time in burst mode (`scheduler.simulation`): move the clock to the next due job, run
everything due, dispatch until the outbox is empty, repeat. So every job the service runs, the
simulator runs, and both read the time only through `Core.clock`.

The jobs: one per scheduled campaign (fire its latest due time), the quota check and its
top-ups (PINGAN_QUOTA_CHECK), and the monthly report on its due day (each morning at 07:30;
PINGAN_REPORT_DUE_DAY, PINGAN_REPORT_PERIOD), and each night at 03:10 the partitions: months of
messages and attempts created ahead on PostgreSQL and PINGAN_RETENTION__MONTHS applied
(`scheduler.services.retention`). Dispatching, with its housekeeping (expiring
status callbacks that never matched a message), runs between jobs: a thread in the service,
after each step in the simulator.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from scheduler.core import Core
from scheduler.expansion import ExpansionResult, describe, masked_traceback
from scheduler.logs import get_logger
from scheduler.planner import Planner

log = get_logger("scheduler.loop")

QUOTA_CHECK_JOB = "_quota_check"
MONTHLY_REPORT_JOB = "_monthly_report"
REPORT_TIME = dt.time(7, 30)
PARTITIONS_JOB = "_partitions"
RECEIPTS_JOB = "_receipts"
# At night, outside any sending hours: creating a partition briefly locks the table.
PARTITIONS_TIME = dt.time(3, 10)


@dataclass(frozen=True)
class Job:
    """One row of the job table. `run(loop)` does the work at the loop's clock time."""

    id: str
    trigger: BaseTrigger
    run: Callable[[Loop], object]
    campaign: str | None = None


class Loop:
    """The state the jobs share: the core (its clock), the planner and the firing lock (a
    campaign firing, a top-up and a reload never interleave)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.fire_lock = threading.Lock()
        self.planner: Planner = core.planner()
        self.topups: list[dict[str, Any]] = []
        self.reports: list[tuple[dt.date, str]] = []

    def now(self) -> dt.datetime:
        return self.core.clock()

    def rebuild_planner(self) -> None:
        with self.fire_lock:
            self.planner = self.core.planner()

    # -- the table ---------------------------------------------------------------------------

    def jobs(self, *, after: dt.datetime | None = None) -> list[Job]:
        """The job table. A campaign whose window is over by `after` has nothing left to
        fire and no job (missed firings are the catch-up's, within the grace period)."""
        from scheduler.topups import check_trigger

        settings = self.core.settings
        tz = settings.tz
        table: list[Job] = []
        for c in self.core.campaigns.scheduled():
            trigger = c.trigger(tz)
            if trigger is None:
                continue
            if after is not None:
                nxt = trigger.get_next_fire_time(None, after)
                if nxt is None or nxt < after:  # a one-off date trigger answers its past date
                    continue
            table.append(Job(c.name, trigger, _campaign_job(c.name), campaign=c.name))
        table.append(
            Job(QUOTA_CHECK_JOB, check_trigger(settings.quota_check, tz), Loop.quota_check)
        )
        table.append(
            Job(
                MONTHLY_REPORT_JOB,
                CronTrigger(hour=REPORT_TIME.hour, minute=REPORT_TIME.minute, timezone=tz),
                Loop.due_report,
            )
        )
        if self._pulls_receipts():
            table.append(
                Job(
                    RECEIPTS_JOB,
                    IntervalTrigger(minutes=settings.dispatch.receipt_pull_minutes, timezone=tz),
                    Loop.receipts,
                )
            )
        table.append(
            Job(
                PARTITIONS_JOB,
                CronTrigger(hour=PARTITIONS_TIME.hour, minute=PARTITIONS_TIME.minute, timezone=tz),
                Loop.partitions,
            )
        )
        return table

    # -- what the jobs do --------------------------------------------------------------------

    def fire_due(self, campaign_name: str) -> ExpansionResult | None:
        """Fire the campaign's latest due time (a job runs once for coalesced misses)."""
        with self.fire_lock:
            if self.core.stop.is_set():
                return None
            planner = self.planner
            try:
                campaign = planner.campaigns.get(campaign_name)
            except Exception:
                log.warning("job.unknown_campaign", campaign=campaign_name)
                return None
            now = self.now()
            t = planner.latest_due(campaign, now + dt.timedelta(seconds=1))
            if t is None:
                log.info("job.nothing_due", campaign=campaign_name)
                return None
            try:
                return planner.fire_scheduled(campaign, t)
            except Exception as exc:
                # The expander records an occurrence's own failure; this is the database or
                # the like. The next firing, or the catch-up at the next start, tries again.
                log.error(
                    "job.fire_failed",
                    campaign=campaign_name,
                    error=describe(exc),
                    traceback=masked_traceback(exc),
                )
                return None

    def quota_check(self) -> list[dict[str, Any]]:
        """On the quota check day: a top-up for every town behind pace."""
        from scheduler.topups import check_quotas

        if self.core.stop.is_set():
            return []
        with self.fire_lock:
            done = check_quotas(self.core, self.now())
        self.topups.extend(done)
        return done

    def due_report(self) -> Any:
        """Each morning: the monthly report is written on its due day (once)."""
        from scheduler.reports import write_due_report

        if self.core.stop.is_set():
            return None
        today = self.now().astimezone(self.core.settings.tz).date()
        path = write_due_report(self.core, today)
        if path is not None:
            self.reports.append((today, str(path)))
        return path

    def partitions(self) -> Any:
        """Each night: partitions created ahead, old months archived and dropped if the
        retention setting asks. A failure is logged; the next night tries again (months are
        created several ahead, and the default partition takes rows meanwhile)."""
        from scheduler.services.retention import daily_partitions

        if self.core.stop.is_set():
            return None
        try:
            done = daily_partitions(self.core)
        except Exception as exc:
            log.error("job.partitions_failed", error=describe(exc))
            return None
        pruned = [m.month for m in done.pruned.months] if done.pruned else []
        if done.created or pruned:
            log.info("job.partitions", created=list(done.created), pruned=pruned)
        return done

    def _pulls_receipts(self) -> bool:
        """A real provider's receipts can go missing; a rehearsal settles every message at
        once and has nothing to pull."""
        from scheduler.providers.registry import provider_class

        settings = self.core.settings
        if settings.dispatch.receipt_pull_minutes <= 0:
            return False
        return not provider_class(settings.provider).settles_at_once

    def receipts(self) -> Any:
        """Every few minutes: receipts pulled for messages no push has settled."""
        from scheduler.providers import make_provider
        from scheduler.receipts import pull_receipts

        if self.core.stop.is_set():
            return None
        every = dt.timedelta(minutes=self.core.settings.dispatch.receipt_pull_minutes)
        try:
            provider = make_provider(self.core.settings)
            try:
                return pull_receipts(
                    self.core,
                    provider,
                    older_than=every,
                    recheck_after=every,
                    limit=self.core.settings.dispatch.receipt_pull_batch,
                )
            finally:
                provider.close()
        except Exception as exc:
            log.error("job.receipts_failed", error=describe(exc))
            return None

    def catch_up(self) -> list[ExpansionResult]:
        """At (re)start: fire what was missed while down, within grace; resume expansions."""
        with self.fire_lock:
            return self.planner.catch_up(self.now())


def _campaign_job(name: str) -> Callable[[Loop], object]:
    def run(loop: Loop) -> object:
        return loop.fire_due(name)

    return run
