"""Quota top-ups: on the check day, a town behind pace gets a top-up occurrence.

The top-up is sized to bring the town back to pace (what the target asks for by now), less
what is already queued for it.

The top-up goes through the campaigns engine like any firing: it reaches residents of the town
not yet messaged in the rule's window, at most as many as close the gap, within the
per-resident cap.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from scheduler.core import Core
from scheduler.exceptions import SettingsError
from scheduler.firings import Target
from scheduler.logs import get_logger
from scheduler.planner import Firing
from scheduler.quotas import Status, attainment, load_rules, window_containing
from scheduler.sending_hours import next_allowed
from scheduler.store import outbox

log = get_logger("scheduler.topups")
TOP_UP_EVENT = "quota-top-up"
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def check_trigger(setting: str, tz: Any) -> CronTrigger:
    """`thu 10:00` (PINGAN_QUOTA_CHECK) as a weekly trigger."""
    try:
        day, hhmm = setting.split()
        hour, minute = (int(x) for x in hhmm.split(":"))
        if day.lower() not in _DAYS:
            raise ValueError(day)
    except ValueError:
        raise SettingsError(
            f"PINGAN_QUOTA_CHECK must look like 'thu 10:00', got {setting!r}"
        ) from None
    return CronTrigger(day_of_week=day.lower(), hour=hour, minute=minute, timezone=tz)


def check_quotas(core: Core, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Schedule a top-up for every town behind pace on an active town rule; what was done."""
    now = now or core.clock()
    tz = core.settings.tz
    campaign = core.campaigns.for_event(TOP_UP_EVENT)
    if campaign is None:
        log.info("topup.no_campaign")
        return []
    today = now.astimezone(tz).date()
    if not campaign.active.contains(today):
        return []
    done: list[dict[str, Any]] = []
    for rule in load_rules(core.settings.config_dir, core.district):
        if rule.subject != "town" or rule.measure == "people_reached":
            continue
        window = window_containing(rule, today, tz)
        if window is None:
            continue
        start, end = window.bounds(tz)
        for row in attainment(core.engine, rule, window, core.district, now=now, tz=tz):
            if row.status is not Status.BEHIND:
                continue
            town = row.subject.key
            pending = outbox.queued_for_town(core.engine, town_id=town, since=start, until=end)
            # Close the gap to the pace the target asks for by now; later firings of the
            # regular campaigns are there for the rest of the window.
            gap = min(row.shortfall, row.expected - row.actual) - pending
            if gap <= 0:
                continue
            at = next_allowed(now, core.settings.allowed_hours, tz).replace(microsecond=0)
            target = Target(
                town=town, rule=rule.id, window=window.label, since=start, until=end, limit=gap
            )
            result = core.planner().fire(Firing.topup(campaign, at, target))
            log.info(
                "topup.scheduled",
                rule=rule.id,
                window=window.label,
                town=town,
                target=row.target,
                actual=row.actual,
                expected=row.expected,
                pending=pending,
                gap=gap,
                occurrence_id=result.occurrence_id,
                queued=result.queued,
            )
            done.append(
                {**target.to_json(), "occurrence_id": result.occurrence_id, "queued": result.queued}
            )
    return done
