"""Firing campaigns: turning a (campaign, time) into an expanded occurrence, exactly once.

The live service (APScheduler waking it), `pingan campaigns run`, the catch-up at start and the
simulator all fire through here; the occurrence key (campaign, scheduled time) makes a second
firing of the same time a no-op.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from scheduler.campaigns import Campaign, Campaigns
from scheduler.expansion import Expander, ExpansionResult
from scheduler.logs import get_logger
from scheduler.models import OccurrenceState
from scheduler.store import outbox

log = get_logger("scheduler.planner")


@dataclass(frozen=True)
class Firing:
    campaign: Campaign
    scheduled_at: dt.datetime
    key: str
    kind: str = "scheduled"
    target: dict[str, Any] | None = None


class Planner:
    def __init__(
        self,
        engine: Any,
        campaigns: Campaigns,
        expander: Expander,
        *,
        tz: ZoneInfo,
        grace: dt.timedelta,
    ) -> None:
        self.engine = engine
        self.campaigns = campaigns
        self.expander = expander
        self.tz = tz
        self.grace = grace

    def fire(self, firing: Firing) -> ExpansionResult:
        """Create the occurrence if new and expand it (or resume a killed expansion)."""
        c = firing.campaign
        occ, created = outbox.get_or_create_occurrence(
            self.engine,
            campaign=firing.key,
            scheduled_at=firing.scheduled_at,
            kind=firing.kind,
            channel=c.channel,
            priority=c.priority,
            target=firing.target,
            now=self.expander.clock(),
        )
        if created:
            log.info(
                "occurrence.fired",
                occurrence_id=occ.id,
                campaign=firing.key,
                scheduled_at=firing.scheduled_at.isoformat(),
                kind=firing.kind,
            )
        if occ.state != OccurrenceState.EXPANDING:
            return ExpansionResult(occ.id, occ.state, occ.queued, dict(occ.excluded), occ.error)
        return self.expander.expand(c, occ)

    def fire_scheduled(self, campaign: Campaign, scheduled_at: dt.datetime) -> ExpansionResult:
        return self.fire(Firing(campaign, scheduled_at, campaign.name))

    def latest_due(self, campaign: Campaign, now: dt.datetime) -> dt.datetime | None:
        """The latest fire time within the grace period before now (missed ones coalesce)."""
        latest = None
        for t in campaign.fire_times(self.tz, now - self.grace, now):
            latest = t
        return latest

    def catch_up(self, now: dt.datetime) -> list[ExpansionResult]:
        """At start: fire what was missed while down (inside grace), and resume expansions."""
        results = []
        for c in self.campaigns.scheduled():
            t = self.latest_due(c, now)
            if t is None:
                continue
            existing = outbox.find_occurrence(self.engine, c.name, t)
            if existing is None:
                log.info("occurrence.catch_up", campaign=c.name, scheduled_at=t.isoformat())
            if existing is None or existing.state == OccurrenceState.EXPANDING:
                results.append(self.fire_scheduled(c, t))
        results.extend(self.resume_expanding())
        return results

    def resume_expanding(self) -> list[ExpansionResult]:
        """Finish expansions cut short by a crash or a stop."""
        results = []
        for occ in outbox.list_occurrences(self.engine, limit=10_000):
            if occ.state != OccurrenceState.EXPANDING:
                continue
            name = occ.campaign.split(":", 1)[0]
            if name not in self.campaigns.by_name:
                continue
            results.append(self.expander.expand(self.campaigns.get(name), occ))
        return results

    def next_fire_times(
        self, campaign: Campaign, now: dt.datetime, count: int = 3
    ) -> list[dt.datetime]:
        out: list[dt.datetime] = []
        for t in campaign.fire_times(self.tz, now, now + dt.timedelta(days=400)):
            out.append(t)
            if len(out) == count:
                break
        return out
