"""Firing campaigns: turning a (campaign, time) into an expanded occurrence, exactly once.

The live service (APScheduler waking it), `pingan campaigns run`, the catch-up at start and the
simulator all fire through here; the occurrence key (campaign, scheduled time) makes a second
firing of the same time a no-op. A campaign that cannot be expanded fails alone (its
occurrence `failed`, with the reason) and `retry` runs it again once the cause is fixed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from scheduler.campaigns import Campaign, Campaigns
from scheduler.exceptions import PingAnError, UnknownName
from scheduler.expansion import (
    Expander,
    ExpansionResult,
    describe,
    masked_traceback,
    result_of,
)
from scheduler.firings import (
    FiringKind,
    Target,
    alert_key,
    campaign_name_of,
    scheduled_key,
    topup_key,
)
from scheduler.logs import get_logger
from scheduler.models import Occurrence, OccurrenceState
from scheduler.store import outbox

log = get_logger("scheduler.planner")


@dataclass(frozen=True)
class Firing:
    """One firing of a campaign: the occurrence key (campaign, scheduled_at) makes it happen
    once. Build one with `scheduled`, `topup` or `alert`, which own the key's format."""

    campaign: Campaign
    scheduled_at: dt.datetime
    key: str
    kind: FiringKind = FiringKind.SCHEDULED
    target: Target = field(default_factory=Target)

    def __post_init__(self) -> None:
        # Callers may still name the kind by its stored string, or pass a target as read.
        object.__setattr__(self, "kind", FiringKind(self.kind))
        object.__setattr__(self, "target", Target.parse(self.target))

    @classmethod
    def scheduled(
        cls, campaign: Campaign, at: dt.datetime, kind: FiringKind = FiringKind.SCHEDULED
    ) -> Firing:
        return cls(campaign, at, scheduled_key(campaign.name), kind)

    @classmethod
    def topup(cls, campaign: Campaign, at: dt.datetime, target: Target) -> Firing:
        assert target.rule is not None and target.town is not None
        return cls(
            campaign,
            at,
            topup_key(campaign.name, target.rule, target.town),
            FiringKind.TOPUP,
            target,
        )

    @classmethod
    def alert(cls, campaign: Campaign, at: dt.datetime, target: Target) -> Firing:
        assert target.town is not None and target.village is not None
        return cls(
            campaign,
            at,
            alert_key(campaign.name, target.town, target.village),
            FiringKind.ALERT,
            target,
        )


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
            kind=firing.kind.value,
            channel=c.channel,
            priority=c.priority,
            target=firing.target.to_json(),
            now=self.expander.clock(),
        )
        if created:
            log.info(
                "occurrence.fired",
                occurrence_id=occ.id,
                campaign=firing.key,
                scheduled_at=firing.scheduled_at.isoformat(),
                kind=firing.kind.value,
            )
        if occ.state != OccurrenceState.EXPANDING:
            return result_of(occ)
        return self.expander.expand(c, occ)

    def fire_scheduled(self, campaign: Campaign, scheduled_at: dt.datetime) -> ExpansionResult:
        return self.fire(Firing.scheduled(campaign, scheduled_at))

    def latest_due(self, campaign: Campaign, now: dt.datetime) -> dt.datetime | None:
        """The latest fire time within the grace period before now (missed ones coalesce)."""
        latest = None
        for t in campaign.fire_times(self.tz, now - self.grace, now):
            latest = t
        return latest

    def catch_up(self, now: dt.datetime) -> list[ExpansionResult]:
        """At start: fire what was missed while down (inside grace), and resume expansions.

        The results include due occurrences that failed before (so `pingan run --once` can
        name them); one campaign's failure never keeps the others from firing.
        """
        results = []
        for c in self.campaigns.scheduled():
            try:
                t = self.latest_due(c, now)
                if t is None:
                    continue
                existing = outbox.find_occurrence(self.engine, c.name, t)
                if existing is None:
                    log.info("occurrence.catch_up", campaign=c.name, scheduled_at=t.isoformat())
                if existing is None or existing.state == OccurrenceState.EXPANDING:
                    results.append(self.fire_scheduled(c, t))
                elif existing.state == OccurrenceState.FAILED:
                    results.append(result_of(existing))
            except Exception as exc:
                # Not the occurrence's fault (the expander records those): the database, say.
                log.error(
                    "occurrence.catch_up_failed",
                    campaign=c.name,
                    error=describe(exc),
                    traceback=masked_traceback(exc),
                )
        results.extend(self.resume_expanding())
        return results

    def resume_expanding(self) -> list[ExpansionResult]:
        """Finish expansions cut short by a crash or a stop; one whose campaign is no longer
        defined is marked failed (it would otherwise wait for ever)."""
        results = []
        for occ in outbox.list_occurrences(self.engine, limit=10_000):
            if occ.state != OccurrenceState.EXPANDING:
                continue
            campaign = self.campaign_of(occ)
            if campaign is None:
                results.append(self.expander.fail(occ, self._no_campaign(occ)))
                continue
            results.append(self.expander.expand(campaign, occ))
        return results

    def campaign_of(self, occ: Occurrence) -> Campaign | None:
        """The campaign an occurrence belongs to (its key is NAME or NAME:detail)."""
        name = campaign_name_of(occ.campaign, self.campaigns.by_name)
        return None if name is None else self.campaigns.by_name[name]

    def _no_campaign(self, occ: Occurrence) -> str:
        return f"campaign of occurrence {occ.campaign!r} is not defined in campaigns.yaml any more"

    def retry(self, occurrence_id: int) -> ExpansionResult:
        """Run a failed occurrence again, at its original scheduled time, once its cause is
        fixed: it resumes from its cursor, so nobody already queued is queued twice.

        Raises UnknownName for no such occurrence and PingAnError for one that is not failed
        (or that another retry has just taken).
        """
        occ = outbox.get_occurrence(self.engine, occurrence_id)
        if occ is None:
            raise UnknownName(f"no occurrence {occurrence_id}")
        if occ.state != OccurrenceState.FAILED:
            raise PingAnError(
                f"occurrence {occurrence_id} ({occ.campaign}) is {occ.state}, not failed: "
                "only a failed occurrence can be retried"
            )
        if not outbox.reopen_failed(self.engine, occurrence_id):
            raise PingAnError(f"occurrence {occurrence_id} is being retried already")
        occ = outbox.get_occurrence(self.engine, occurrence_id)
        assert occ is not None
        log.info(
            "occurrence.retry",
            occurrence_id=occ.id,
            campaign=occ.campaign,
            scheduled_at=occ.scheduled_at.isoformat(),
            cursor=occ.cursor,
        )
        campaign = self.campaign_of(occ)
        if campaign is None:
            return self.expander.fail(occ, self._no_campaign(occ))
        return self.expander.expand(campaign, occ)

    def next_fire_times(
        self, campaign: Campaign, now: dt.datetime, count: int = 3
    ) -> list[dt.datetime]:
        out: list[dt.datetime] = []
        for t in campaign.fire_times(self.tz, now, now + dt.timedelta(days=400)):
            out.append(t)
            if len(out) == count:
                break
        return out
