"""Quota top-ups on the check day, and the report written on its due day."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.dispatcher import Dispatcher
from scheduler.models import Message, Occurrence, Recipient
from scheduler.providers import make_provider
from scheduler.reports import write_due_report
from scheduler.simulation import ManualClock
from scheduler.topups import check_quotas
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")


def test_town_behind_pace_gets_a_top_up_to_unreached_residents(core: Core) -> None:
    # November: the monthly rule asks 80% of each town's population by 30 November.
    clock = ManualClock(dt.datetime(2022, 11, 10, 10, 0, tzinfo=TZ))
    core.clock = clock
    add_recipients(core.engine, core.district, 3000)
    done = check_quotas(core, clock())
    assert {d["town"] for d in done} == {t.id for t in core.district.towns}
    with Session(core.engine) as s:
        occs = s.scalars(select(Occurrence).where(Occurrence.kind == "topup")).all()
        assert len(occs) == len(core.district.towns)
        for o in occs:
            town = o.target["town"]
            population = core.district.towns_by_id[town].population
            # Sized to the pace gap: 80% of the population x the elapsed share of November.
            assert 0 < o.target["limit"] < round(population * 0.8)
            n = s.scalar(
                select(func.count()).select_from(Message).where(Message.occurrence_id == o.id)
            )
            residents = s.scalar(
                select(func.count()).select_from(Recipient).where(Recipient.town_id == town)
            )
            assert n == min(o.target["limit"], residents)
            towns = set(s.scalars(select(Message.town_id).where(Message.occurrence_id == o.id)))
            assert towns <= {town}
            # Only the town's residents are read: nobody is counted as outside the audience.
            assert "outside_audience" not in (o.excluded or {})
    # A second check: everyone of these towns is already on the way, nobody is queued twice.
    again = check_quotas(core, clock() + dt.timedelta(minutes=5))
    assert [d["queued"] for d in again] == [0] * len(again)


def test_sent_residents_are_not_topped_up_again(core: Core) -> None:
    clock = ManualClock(dt.datetime(2022, 11, 7, 9, 0, tzinfo=TZ))
    core.clock = clock
    add_recipients(core.engine, core.district, 600)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), clock())
    d = Dispatcher(core.engine, make_provider(core.settings), core.settings, clock=clock)
    d.run(until_empty=True)
    d.close()
    clock.set(dt.datetime(2022, 11, 24, 10, 0, tzinfo=TZ))
    check_quotas(core, clock())
    with Session(core.engine) as s:
        topups = s.scalars(select(Occurrence).where(Occurrence.kind == "topup")).all()
        assert topups
        for o in topups:
            assert o.excluded.get("already_reached", 0) > 0
            assert o.queued == 0 or o.excluded.get("already_reached", 0) > 0


def test_monthly_report_is_written_once_on_its_due_day(core: Core) -> None:
    core.clock = ManualClock(dt.datetime(2022, 10, 25, 7, 30, tzinfo=TZ))
    assert write_due_report(core, dt.date(2022, 10, 24)) is None
    path = write_due_report(core, dt.date(2022, 10, 25))
    assert path is not None and path.exists() and path.name == "月报-2022-10.xlsx"
    assert write_due_report(core, dt.date(2022, 10, 25)) is None
