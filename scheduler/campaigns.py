"""Campaign definitions (config/campaigns.yaml) and when they fire.

The schedule of a campaign is an APScheduler trigger in the district's time zone, bounded by
the campaign's active window; both the live service and the simulated clock ask it for fire
times, so they cannot disagree.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from pydantic import Field, field_validator, model_validator

from scheduler.config import SEGMENTS, District, Frozen, Residence, parse_model, read_yaml
from scheduler.exceptions import ConfigError, UnknownName

CAMPAIGNS_FILE = "campaigns.yaml"
_NAME = r"^[a-z0-9][a-z0-9-]*$"


class Schedule(Frozen):
    """A 5-field crontab (weekday names only), or a one-off local date-time."""

    cron: str | None = None
    at: dt.datetime | None = None
    # Event-driven campaigns (fraud-case alerts, quota top-ups) have no clock of their own.
    event: Literal["fraud-case", "quota-top-up"] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Schedule:
        given = [x for x in (self.cron, self.at, self.event) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of cron, at or event")
        if self.cron is not None:
            fields = self.cron.split()
            if len(fields) != 5:
                raise ValueError(
                    f"cron needs 5 fields (minute hour day month weekday): {self.cron!r}"
                )
            if re.search(r"\d", fields[4]):
                raise ValueError(
                    "write weekdays as mon..sun: "
                    "APScheduler 3 counts 0 as Monday, crontab as Sunday"
                )
            try:
                CronTrigger.from_crontab(self.cron, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f"bad cron {self.cron!r}: {exc}") from None
        if self.at is not None and self.at.tzinfo is not None:
            raise ValueError("write `at` as local time without an offset")
        return self


class ActiveWindow(Frozen):
    start: dt.date
    end: dt.date

    @model_validator(mode="after")
    def _ordered(self) -> ActiveWindow:
        if self.end < self.start:
            raise ValueError("end is before start")
        return self

    def contains(self, day: dt.date) -> bool:
        return self.start <= day <= self.end


class Audience(Frozen):
    """Who a campaign reaches; every list empty means everyone."""

    towns: tuple[str, ...] = ()
    # "town/village" ids.
    villages: tuple[str, ...] = ()
    carriers: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    residence: Residence | None = None

    @field_validator("segments")
    @classmethod
    def _known_segments(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - SEGMENTS)
        if unknown:
            raise ValueError(f"unknown segments {unknown}; known: {sorted(SEGMENTS)}")
        return value


class Campaign(Frozen):
    name: str = Field(pattern=_NAME)
    description: str = ""
    channel: Literal["sms", "letter"] = "sms"
    template: str | None = None
    pool: str | None = None
    templates_by_segment: dict[str, str] | None = None
    audience: Audience = Audience()
    schedule: Schedule
    active: ActiveWindow
    priority: int = 0

    @field_validator("audience", mode="before")
    @classmethod
    def _all(cls, value: object) -> object:
        return {} if value in ("all", None) else value

    @model_validator(mode="after")
    def _one_content(self) -> Campaign:
        given = [x for x in (self.template, self.pool, self.templates_by_segment) if x]
        if len(given) != 1:
            raise ValueError("give exactly one of template, pool or templates_by_segment")
        if self.templates_by_segment:
            unknown = sorted(set(self.templates_by_segment) - SEGMENTS)
            if unknown:
                raise ValueError(f"templates_by_segment: unknown segments {unknown}")
        if self.channel == "letter" and not self.template:
            raise ValueError("a letter campaign names one template")
        return self

    def template_names(self) -> list[str]:
        if self.template:
            return [self.template]
        if self.templates_by_segment:
            return list(dict.fromkeys(self.templates_by_segment.values()))
        return []

    def trigger(self, tz: ZoneInfo) -> BaseTrigger | None:
        """The APScheduler trigger, bounded by the active window; None for event campaigns."""
        start = dt.datetime.combine(self.active.start, dt.time(0), tz)
        end = dt.datetime.combine(self.active.end, dt.time(23, 59, 59), tz)
        if self.schedule.cron:
            f = self.schedule.cron.split()
            return CronTrigger(
                minute=f[0],
                hour=f[1],
                day=f[2],
                month=f[3],
                day_of_week=f[4],
                timezone=tz,
                start_date=start,
                end_date=end,
            )
        if self.schedule.at:
            at = self.schedule.at.replace(tzinfo=tz)
            return DateTrigger(run_date=at, timezone=tz) if start <= at <= end else None
        return None

    def fire_times(
        self, tz: ZoneInfo, after: dt.datetime, until: dt.datetime
    ) -> Iterator[dt.datetime]:
        """Fire times in (after, until], from the trigger itself."""
        trigger = self.trigger(tz)
        if trigger is None:
            return
        previous: dt.datetime | None = None
        now = after + dt.timedelta(microseconds=1)
        while True:
            nxt = trigger.get_next_fire_time(previous, now)
            if nxt is None or nxt > until:
                return
            if nxt > after:
                yield nxt
            previous = nxt
            now = nxt + dt.timedelta(microseconds=1)


class CampaignFile(Frozen):
    campaigns: tuple[Campaign, ...]

    @model_validator(mode="after")
    def _unique(self) -> CampaignFile:
        names = [c.name for c in self.campaigns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate campaign names: {', '.join(dupes)}")
        return self


class Campaigns:
    """The loaded campaigns, checked against the district (towns, villages, carriers)."""

    def __init__(self, campaigns: tuple[Campaign, ...]) -> None:
        self.all = campaigns
        self.by_name = {c.name: c for c in campaigns}

    def get(self, name: str) -> Campaign:
        try:
            return self.by_name[name]
        except KeyError:
            known = ", ".join(self.by_name)
            raise UnknownName(f"unknown campaign {name!r} (known: {known})") from None

    def scheduled(self) -> list[Campaign]:
        return [c for c in self.all if c.schedule.event is None]

    def for_event(self, event: str) -> Campaign | None:
        return next((c for c in self.all if c.schedule.event == event), None)


def load_campaigns(config_dir: Path, district: District) -> Campaigns:
    path = config_dir / CAMPAIGNS_FILE
    parsed = parse_model(path, CampaignFile, read_yaml(path))
    problems = []
    carriers = {c.id for c in district.carriers}
    for i, c in enumerate(parsed.campaigns):
        where = f"campaigns[{i}] ({c.name})"
        for town in c.audience.towns:
            if town not in district.towns_by_id:
                problems.append(f"{where}.audience.towns: unknown town {town!r}")
        for key in c.audience.villages:
            town_id, _, village_id = key.partition("/")
            town_obj = district.towns_by_id.get(town_id)
            if town_obj is None or village_id not in {v.id for v in town_obj.villages}:
                problems.append(
                    f"{where}.audience.villages: unknown village {key!r} (town/village)"
                )
        for carrier in c.audience.carriers:
            if carrier not in carriers:
                problems.append(f"{where}.audience.carriers: carrier {carrier!r} not in district")
    if problems:
        raise ConfigError(path, problems)
    return Campaigns(parsed.campaigns)


def week_index(day: dt.date) -> int:
    """Weeks since Monday 2001-01-01: consecutive weeks get consecutive pool entries."""
    return (day - dt.date(2001, 1, 1)).days // 7


def week_start(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())
