"""The outbox drained through the dry-run provider: states, counters, hours, pause, crashes."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.dispatcher import Dispatcher
from scheduler.models import (
    Attempt,
    Message,
    MessageState,
    Occurrence,
    OccurrenceState,
    SendCounter,
)
from scheduler.providers import make_provider
from scheduler.simulation import ManualClock
from scheduler.store import delivery, outbox
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)


def _setup(core: Core, n: int = 200) -> int:
    add_recipients(core.engine, core.district, n)
    return (
        core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY).occurrence_id
    )


def _dispatcher(core: Core, clock: ManualClock) -> Dispatcher:
    return Dispatcher(core.engine, make_provider(core.settings), core.settings, clock=clock)


def test_dryrun_sends_everything_once_and_counts_it(core: Core) -> None:
    clock = ManualClock(MONDAY + dt.timedelta(minutes=5))
    core.clock = clock
    occ_id = _setup(core)
    d = _dispatcher(core, clock)
    stats = d.run(until_empty=True)
    d.close()
    assert stats.sent == 200
    with Session(core.engine) as s:
        states = dict(s.execute(select(Message.state, func.count()).group_by(Message.state)).all())
        assert sum(states.values()) == 200
        assert set(states) <= {
            MessageState.DELIVERED,
            MessageState.UNDELIVERED,
            MessageState.FAILED,
        }
        assert states.get(MessageState.DELIVERED, 0) > 150
        sent_counter = s.scalar(select(func.sum(SendCounter.sent)))
        delivered_counter = s.scalar(select(func.sum(SendCounter.delivered)))
        assert sent_counter == 200
        assert delivered_counter == states.get(MessageState.DELIVERED, 0)
        assert s.scalar(select(func.count()).select_from(Attempt)) == 200
        assert s.get(Occurrence, occ_id).state == OccurrenceState.DONE  # type: ignore[union-attr]
    lines = core.settings.dryrun_log_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200
    assert all("****" in json.loads(line)["to"] for line in lines)


def test_nothing_is_sent_outside_allowed_hours(core: Core) -> None:
    _setup(core, 20)
    clock = ManualClock(dt.datetime(2022, 10, 10, 21, 0, tzinfo=TZ))
    core.clock = clock
    d = _dispatcher(core, clock)
    assert d.run(until_empty=True).sent == 0
    clock.set(dt.datetime(2022, 10, 11, 8, 0, tzinfo=TZ))
    assert d.run(until_empty=True).sent == 20
    d.close()
    with Session(core.engine) as s:
        for sent_at in s.scalars(select(Message.sent_at)):
            assert sent_at is not None
            assert dt.time(8) <= sent_at.astimezone(TZ).time() < dt.time(20)


def test_paused_occurrence_sends_nothing_until_resumed(core: Core) -> None:
    clock = ManualClock(MONDAY + dt.timedelta(minutes=1))
    core.clock = clock
    occ_id = _setup(core, 30)
    outbox.set_paused(core.engine, occ_id, True)
    d = _dispatcher(core, clock)
    assert d.run(until_empty=True).sent == 0
    outbox.set_paused(core.engine, occ_id, False)
    assert d.run(until_empty=True).sent == 30
    d.close()


def test_messages_left_sending_by_a_crash_are_reconciled_not_lost(core: Core) -> None:
    clock = ManualClock(MONDAY + dt.timedelta(minutes=1))
    core.clock = clock
    _setup(core, 10)
    # A crash after the claim's commit and before any provider call.
    with Session(core.engine) as s, s.begin():
        s.execute(update(Message).values(state=MessageState.SENDING, attempts=1, status_at=clock()))
    clock.set(clock() + dt.timedelta(minutes=10))
    d = _dispatcher(core, clock)
    stats = d.run(until_empty=True)
    d.close()
    # The dry-run log shows none of them went out, so they are sent now, once each.
    assert stats.sent == 10
    lines = core.settings.dryrun_log_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10


def test_claims_take_the_higher_priority_first_in_id_order(core: Core) -> None:
    add_recipients(core.engine, core.district, 30)
    monday = dt.datetime(2022, 10, 31, 9, 0, tzinfo=TZ)
    planner = core.planner()
    weekly = planner.fire_scheduled(core.campaigns.get("weekly-antifraud"), monday)
    survey = planner.fire_scheduled(
        core.campaigns.get("survey-notice"), monday + dt.timedelta(hours=1)
    )
    now = monday + dt.timedelta(hours=2)
    first = delivery.claim_due(core.engine, now=now, limit=40)
    # survey-notice (priority 10) before weekly-antifraud (priority 5), each in id order.
    assert [c.occurrence_id for c in first] == [survey.occurrence_id] * 30 + [
        weekly.occurrence_id
    ] * 10
    ids = [c.id for c in first]
    assert ids[:30] == sorted(ids[:30]) and ids[30:] == sorted(ids[30:])
    assert all(c.attempts == 1 for c in first)
    rest = delivery.claim_due(core.engine, now=now, limit=40)
    assert len(rest) == 20 and not {c.id for c in rest} & set(ids)
    assert delivery.claim_due(core.engine, now=now, limit=40) == []
    with Session(core.engine) as s:
        states = dict(s.execute(select(Message.state, func.count()).group_by(Message.state)).all())
        occ_states = set(s.scalars(select(Occurrence.state)))
    assert states == {MessageState.SENDING: 60}
    assert occ_states == {OccurrenceState.SENDING}


def test_dryrun_without_its_log_sends_and_writes_nothing(core: Core) -> None:
    settings = core.settings.model_copy(
        update={"dryrun": core.settings.dryrun.model_copy(update={"write_log": False})}
    )
    clock = ManualClock(MONDAY + dt.timedelta(minutes=5))
    core.clock = clock
    _setup(core, 50)
    d = Dispatcher(core.engine, make_provider(settings), settings, clock=clock)
    assert d.run(until_empty=True).sent == 50
    d.close()
    assert not settings.dryrun_log_file.exists()
