"""Typed firings: the kind is an enum, the target a typed value stored as the same readable JSON
rows already carry; occurrence keys are built once and never split back. And the service and
the simulator share one job table."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.firings import FiringKind, Target, campaign_name_of
from scheduler.loop import MONTHLY_REPORT_JOB, QUOTA_CHECK_JOB, Loop
from scheduler.models import Occurrence
from scheduler.planner import Firing
from scheduler.service import Service
from scheduler.simulation import ManualClock
from scheduler.topups import check_quotas
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")

# What a top-up row written before this change holds in `occurrences.target`.
OLD_TOPUP = {
    "town": "huanghu",
    "rule": "town-monthly-novdec",
    "window": "2022-11",
    "since": "2022-11-01T00:00:00+08:00",
    "until": "2022-12-01T00:00:00+08:00",
    "limit": 120,
}


def test_target_reads_old_rows_and_writes_the_same_json() -> None:
    t = Target.parse(OLD_TOPUP)
    assert t.town == "huanghu" and t.limit == 120
    assert t.topup_window == (
        dt.datetime(2022, 11, 1, tzinfo=TZ),
        dt.datetime(2022, 12, 1, tzinfo=TZ),
    )
    assert t.to_json() == OLD_TOPUP
    alert = {"town": "huanghu", "village": "x", "rule": "r", "extra": {"fraud_type": "刷单"}}
    assert Target.parse(alert).to_json() == alert
    assert Target.parse(None) == Target.parse({}) == Target()
    assert Target().to_json() == {}


def test_kind_is_an_enum_stored_as_its_old_string(core: Core) -> None:
    c = core.campaigns.get("survey-notice")
    at = dt.datetime(2022, 10, 10, 10, tzinfo=TZ)
    assert Firing(c, at, c.name, "manual").kind is FiringKind.MANUAL
    with pytest.raises(ValueError, match="sometimes"):
        Firing(c, at, c.name, "sometimes")
    core.planner().fire(Firing.scheduled(c, at, FiringKind.MANUAL))
    with Session(core.engine) as s:
        (occ,) = s.scalars(select(Occurrence)).all()
    assert (occ.campaign, occ.kind, occ.target) == ("survey-notice", "manual", {})


def test_keys_name_their_campaign_without_being_split() -> None:
    names = ["quota-top-up", "quota", "weekly-antifraud"]
    assert campaign_name_of("quota-top-up:town-monthly-novdec/huanghu", names) == "quota-top-up"
    assert campaign_name_of("quota:x/y", names) == "quota"
    assert campaign_name_of("weekly-antifraud", names) == "weekly-antifraud"
    assert campaign_name_of("gone:x/y", names) is None


def test_top_up_target_is_typed_and_an_old_row_still_expands(core: Core) -> None:
    clock = ManualClock(dt.datetime(2022, 11, 10, 10, 0, tzinfo=TZ))
    core.clock = clock
    add_recipients(core.engine, core.district, 600)
    done = check_quotas(core, clock())
    assert done
    with Session(core.engine) as s:
        occs = s.scalars(select(Occurrence).where(Occurrence.kind == "topup")).all()
    planner = core.planner()
    for o in occs:
        target = Target.parse(o.target)
        assert o.campaign == f"quota-top-up:{target.rule}/{target.town}"
        assert set(o.target) == {"town", "rule", "window", "since", "until", "limit"}
        assert target.since is not None and target.since.isoformat() == o.target["since"]
        campaign = planner.campaign_of(o)
        assert campaign is not None and campaign.name == "quota-top-up"
    # A row written by the old code (plain strings, as above) is re-expanded through the
    # typed target: retry a failed one and it reaches the same town, within its limit.
    first = occs[0]
    with Session(core.engine) as s, s.begin():
        s.execute(
            update(Occurrence)
            .where(Occurrence.id == first.id)
            .values(state="failed", target={**OLD_TOPUP, "town": first.target["town"]})
        )
    result = planner.retry(first.id)
    assert str(result.state) != "failed"


def test_service_registers_the_loops_job_table(core: Core) -> None:
    core.clock = ManualClock(dt.datetime(2022, 10, 1, tzinfo=TZ))
    service = Service(core, with_dispatch=False, with_http=False)
    service.loop = Loop(core)
    service._start_apscheduler(paused=True)
    try:
        registered = {j["id"] for j in service.health()["jobs"]}
    finally:
        assert service.apscheduler is not None
        # Nothing left for APScheduler's thread to submit as it stops (it was never resumed).
        service.apscheduler.remove_all_jobs()
        service.apscheduler.shutdown()
    table = {j.id for j in service.loop.jobs(after=core.clock())}
    assert registered == table
    assert {QUOTA_CHECK_JOB, MONTHLY_REPORT_JOB} <= table
    assert {c.name for c in core.campaigns.scheduled()} & table
