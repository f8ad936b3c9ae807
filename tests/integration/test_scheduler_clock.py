"""The scheduler on a controlled clock across the sample October–December plan."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.firings import FiringKind
from scheduler.models import Occurrence
from scheduler.settings import Settings
from scheduler.simulation import Downtime, ManualClock, drive
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")


def _at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=TZ)


def test_plan_fires_in_window_and_catches_up_after_downtime(settings: Settings) -> None:
    start, end = _at(2022, 10, 1), _at(2022, 12, 31, 23, 59)
    clock = ManualClock(start)
    core = Core(settings, clock=clock)
    add_recipients(core.engine, core.district, 40)
    downtimes = [
        # Down across Monday 17 Oct 09:00, back the same evening: caught up (inside 24 h).
        Downtime(_at(2022, 10, 17, 8), _at(2022, 10, 17, 19)),
        # Down from Sunday 6 Nov to Tuesday 8 Nov 10:00: the Monday firing is past grace.
        Downtime(_at(2022, 11, 6), _at(2022, 11, 8, 10)),
    ]
    timeline = drive(core, clock, start, end, downtimes=downtimes)
    with Session(core.engine) as s:
        occs = s.scalars(select(Occurrence).order_by(Occurrence.scheduled_at)).all()
    by_campaign: dict[str, list[dt.datetime]] = {}
    for o in occs:
        if o.kind == FiringKind.SCHEDULED:
            by_campaign.setdefault(o.campaign, []).append(o.scheduled_at.astimezone(TZ))
    # The loop runs the service's quota check too: towns this small list leaves behind pace
    # get top-ups, on check days (Thursday 10:00) only.
    topups = [o for o in occs if o.kind == FiringKind.TOPUP]
    assert topups
    assert {o.campaign.partition(":")[0] for o in topups} == {"quota-top-up"}
    assert {o.created_at.astimezone(TZ).weekday() for o in topups} == {3}

    mondays = [_at(2022, 10, 3, 9) + dt.timedelta(weeks=i) for i in range(13)]
    expected_weekly = [m for m in mondays if m != _at(2022, 11, 7, 9)]
    assert by_campaign["weekly-antifraud"] == expected_weekly
    assert by_campaign["survey-notice"] == [_at(2022, 10, 31, 10)]
    assert by_campaign["open-letter"] == [_at(2022, 10, 8, 9)]
    assert by_campaign["targeted-push"] == [_at(2022, 10, d, 10) for d in (5, 12, 19, 26)]
    assert set(by_campaign) == {"weekly-antifraud", "survey-notice", "open-letter", "targeted-push"}
    # The caught-up occurrence keeps its scheduled time and was created at the restart.
    caught = next(o for o in occs if o.scheduled_at == _at(2022, 10, 17, 9))
    assert caught.created_at == _at(2022, 10, 17, 19)
    assert ("weekly-antifraud", _at(2022, 11, 7, 9)) in timeline.missed
    hours = core.settings.allowed_hours
    for o in occs:
        local = o.scheduled_at.astimezone(TZ)
        assert hours[0] <= local.time() < hours[1]
        campaign = core.planner().campaign_of(o)
        assert campaign is not None
        assert campaign.active.contains(local.date())
    # Driving the same period again (a second run, its clock from the start) fires nothing
    # new: the occurrence key forbids it, top-ups included.
    core.close()
    again_clock = ManualClock(start)
    again = Core(settings, clock=again_clock)
    drive(again, again_clock, start, end, downtimes=downtimes)
    with Session(again.engine) as s:
        assert len(s.scalars(select(Occurrence)).all()) == len(occs)
    again.close()
