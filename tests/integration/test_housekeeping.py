"""Housekeeping: status callbacks for ids that never appear expire; the dry-run reconcile finds
what its log holds (in one pass) and resends only the rest."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.dispatcher import Dispatcher
from scheduler.models import Attempt, Message, MessageState, PendingStatus
from scheduler.providers import make_provider
from scheduler.providers.base import DeliveryStatus, OutboundMessage
from scheduler.providers.dryrun import DryRunProvider
from scheduler.simulation import ManualClock
from scheduler.store import delivery
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)


def test_pending_statuses_for_unknown_ids_expire(core: Core) -> None:
    now = MONDAY + dt.timedelta(days=10)
    for sid, age in (("SMold", 8), ("SMweek", 6), ("SMnew", 0)):
        result = delivery.apply_status(
            core.engine,
            sid,
            DeliveryStatus.DELIVERED,
            None,
            now=now - dt.timedelta(days=age),
            tz=TZ,
        )
        assert result == "pending"
    clock = ManualClock(now)
    d = Dispatcher(core.engine, make_provider(core.settings), core.settings, clock=clock)
    d.run(until_empty=True)
    with Session(core.engine) as s:
        assert set(s.scalars(select(PendingStatus.provider_message_id))) == {"SMweek", "SMnew"}
    clock.set(now + dt.timedelta(days=2))
    d.run(until_empty=True)
    d.close()
    with Session(core.engine) as s:
        assert set(s.scalars(select(PendingStatus.provider_message_id))) == {"SMnew"}


def test_dryrun_reconcile_finds_logged_sends_and_resends_only_the_rest(core: Core) -> None:
    clock = ManualClock(MONDAY + dt.timedelta(minutes=1))
    core.clock = clock
    add_recipients(core.engine, core.district, 40)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    claimed = delivery.claim_due(core.engine, now=clock(), limit=40)
    bodies = delivery.bodies(core.engine, [c.body_id for c in claimed])
    # The crash came after the provider took every third message, before anything was recorded.
    provider = DryRunProvider(core.settings.dryrun, core.settings.dryrun_log_file)
    taken = {}
    for c in claimed[::3]:
        msg = OutboundMessage(c.id, c.phone, bodies[c.body_id], c.carrier, c.segments)
        taken[c.id] = provider.send(msg).provider_message_id
    provider.close()
    clock.set(clock() + dt.timedelta(minutes=10))
    d = Dispatcher(core.engine, make_provider(core.settings), core.settings, clock=clock)
    stats = d.run(until_empty=True)
    d.close()
    assert stats.by_outcome["found"] == len(taken) == 14
    assert stats.sent == 40
    with Session(core.engine) as s:
        rows = dict(s.execute(select(Message.id, Message.provider_message_id)).all())
        assert s.scalar(select(func.count()).where(Message.state == MessageState.SENDING)) == 0
        assert s.scalar(select(func.count()).select_from(Attempt)) == 40 + 26
    for mid, sid in taken.items():
        assert rows[mid] == sid
    lines = core.settings.dryrun_log_file.read_text(encoding="utf-8").splitlines()
    sent_ids = [json.loads(line)["message_id"] for line in lines]
    assert sorted(sent_ids) == sorted(rows)  # each message in the log exactly once
