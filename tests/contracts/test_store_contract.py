"""The store's delivery verbs, one suite on every backend (SQLite and PostgreSQL).

The dispatcher and callbacks rely on these promises and nothing else: a message is claimed
once, outcomes and counters are recorded together, receipts only move a message forward
(whatever their order, however often they come), an opt-out cancels what is queued, and an
occurrence finishes when nothing of it is left to send. Run on both backends through the
`core` fixture (parametrised on db_url), as procrastinate and APScheduler 4 run one suite over
every data store.
"""

from __future__ import annotations

import datetime as dt
import threading
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.models import (
    Attempt,
    Message,
    MessageState,
    Occurrence,
    OccurrenceState,
    OptOut,
    PendingStatus,
    SendCounter,
)
from scheduler.providers.base import DeliveryStatus
from scheduler.store import delivery
from scheduler.store.delivery import Claimed, Outcome
from scheduler.store.optouts import OPTED_OUT
from scheduler.store.recipients import record_opt_outs_counted
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)
NOW = MONDAY + dt.timedelta(minutes=5)


def _queue(core: Core, n: int) -> None:
    add_recipients(core.engine, core.district, n)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)


def _states(core: Core) -> dict[str, int]:
    return delivery.state_counts(core.engine)


def _counters(core: Core) -> tuple[int, int]:
    with Session(core.engine) as s:
        row = s.execute(
            select(
                func.coalesce(func.sum(SendCounter.sent), 0),
                func.coalesce(func.sum(SendCounter.delivered), 0),
            )
        ).one()
    return int(row[0]), int(row[1])


def _sent(c: Claimed, sid: str, *, final: DeliveryStatus | None = None) -> Outcome:
    return Outcome(
        c, MessageState.SENT, NOW, "sent", "test", provider_message_id=sid, final_status=final
    )


def test_claim_marks_sending_once_in_rank_order(core: Core) -> None:
    _queue(core, 6)
    first = delivery.claim_due(core.engine, now=NOW, limit=4)
    second = delivery.claim_due(core.engine, now=NOW, limit=4)
    assert len(first) == 4 and len(second) == 2
    assert {c.id for c in first}.isdisjoint(c.id for c in second)
    assert all(c.attempts == 1 for c in first + second)
    assert delivery.claim_due(core.engine, now=NOW, limit=4) == []
    assert _states(core) == {"sending": 6}
    with Session(core.engine) as s:
        assert set(s.scalars(select(Occurrence.state))) == {OccurrenceState.SENDING}


def test_concurrent_claims_never_share_a_message(core: Core) -> None:
    _queue(core, 40)
    got: list[list[int]] = [[] for _ in range(4)]

    def claim(i: int) -> None:
        while batch := delivery.claim_due(core.engine, now=NOW, limit=3):
            got[i].extend(c.id for c in batch)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for g in got for i in g]
    assert len(ids) == len(set(ids)) == 40


def test_claim_skips_not_due_and_paused_and_cancels_opted_out(core: Core) -> None:
    _queue(core, 3)
    assert delivery.claim_due(core.engine, now=MONDAY - dt.timedelta(days=8), limit=10) == []
    with Session(core.engine) as s, s.begin():
        s.execute(update(Occurrence).values(paused=True))
    assert delivery.claim_due(core.engine, now=NOW, limit=10) == []
    with Session(core.engine) as s, s.begin():
        s.execute(update(Occurrence).values(paused=False))
        phone = s.scalars(select(Message.phone).order_by(Message.id)).first()
        s.add(OptOut(phone=phone, source="test", created_at=NOW))
    result = delivery.claim_batch(core.engine, now=NOW, limit=10)
    assert (len(result.claimed), result.cancelled) == (2, 1)
    assert phone not in {c.phone for c in result.claimed}
    with Session(core.engine) as s:
        cancelled = s.execute(
            select(Message.phone, Message.error_code).where(Message.state == MessageState.CANCELLED)
        ).all()
    assert cancelled == [(phone, OPTED_OUT)]


def test_outcomes_states_attempts_and_counters_in_one_record(core: Core) -> None:
    _queue(core, 4)
    a, b, c, d = delivery.claim_due(core.engine, now=NOW, limit=10)
    delivery.record_outcomes(
        core.engine,
        [
            _sent(a, "P-a"),
            _sent(b, "P-b", final=DeliveryStatus.DELIVERED),
            Outcome(c, MessageState.FAILED, NOW, "permanent", "test", error_code="E1"),
            Outcome(d, MessageState.QUEUED, NOW, "outside_hours", "test", attempted=False),
        ],
        tz=TZ,
    )
    assert _states(core) == {"sent": 1, "delivered": 1, "failed": 1, "queued": 1}
    assert _counters(core) == (2, 1)  # a refused message was never sent
    with Session(core.engine) as s:
        assert s.scalar(select(func.count()).select_from(Attempt)) == 3
        assert s.scalar(select(Message.attempts).where(Message.id == d.id)) == 0


def test_receipts_move_forward_only_whatever_their_order(core: Core) -> None:
    _queue(core, 2)
    a, b = delivery.claim_due(core.engine, now=NOW, limit=10)
    # A receipt that beats the record of its send is kept, then applied with the record.
    assert (
        delivery.apply_status(core.engine, "P-a", DeliveryStatus.DELIVERED, None, now=NOW, tz=TZ)
        == "pending"
    )
    delivery.record_outcomes(core.engine, [_sent(a, "P-a"), _sent(b, "P-b")], tz=TZ)
    with Session(core.engine) as s:
        assert s.scalar(select(func.count()).select_from(PendingStatus)) == 0
    later = NOW + dt.timedelta(minutes=1)
    results = [
        delivery.apply_status(core.engine, sid, st, code, now=later, tz=TZ)
        for sid, st, code in [
            ("P-a", DeliveryStatus.SENT, None),
            ("P-a", DeliveryStatus.DELIVERED, None),
            ("P-b", DeliveryStatus.UNDELIVERED, "X9"),
            ("P-b", DeliveryStatus.DELIVERED, None),
            ("P-b", DeliveryStatus.ACCEPTED, None),
        ]
    ]
    assert results == ["unchanged", "unchanged", "applied", "unchanged", "unchanged"]
    assert _states(core) == {"delivered": 1, "undelivered": 1}
    assert _counters(core) == (2, 1)  # delivered counted once, on the day sent
    # A stored value outside the neutral vocabulary is ignored, never guessed at.
    assert delivery.apply_status(core.engine, "P-b", "read", None, now=later, tz=TZ) == "ignored"  # type: ignore[arg-type]


def test_provider_opt_out_and_halt_are_recorded_with_the_outcome(core: Core) -> None:
    _queue(core, 2)
    a, b = delivery.claim_due(core.engine, now=NOW, limit=10)
    delivery.record_outcomes(
        core.engine,
        [
            Outcome(
                a, MessageState.FAILED, NOW, "opt_out", "test", error_code="R1", opted_out=True
            ),
            Outcome(b, MessageState.QUEUED, NOW, "halted", "test", next_attempt_at=NOW, halt=True),
        ],
        tz=TZ,
    )
    with Session(core.engine) as s:
        assert s.execute(select(OptOut.phone, OptOut.source, OptOut.reason)).all() == [
            (a.phone, "provider", "error R1")
        ]
        assert s.scalars(select(Occurrence.paused)).all() == [True]
    assert delivery.claim_due(core.engine, now=NOW, limit=10) == []


def test_opt_out_cancels_queued_and_retrying_not_sent(core: Core) -> None:
    _queue(core, 3)
    a, b, c = delivery.claim_due(core.engine, now=NOW, limit=10)
    delivery.record_outcomes(
        core.engine,
        [
            _sent(a, "P-a"),
            Outcome(b, MessageState.QUEUED, NOW, "transient", "test", next_attempt_at=NOW),
            Outcome(c, MessageState.QUEUED, NOW, "outside_hours", "test", attempted=False),
        ],
        tz=TZ,
    )
    new, cancelled = record_opt_outs_counted(
        core.engine, [a.phone, b.phone, c.phone], source="reply", now=core.clock()
    )
    assert (new, cancelled) == (3, 2)
    assert _states(core) == {"sent": 1, "cancelled": 2}


def test_occurrence_finishes_when_nothing_is_left_to_send(core: Core) -> None:
    _queue(core, 2)
    a, b = delivery.claim_due(core.engine, now=NOW, limit=10)
    delivery.record_outcomes(
        core.engine,
        [
            _sent(a, "P-a"),
            Outcome(b, MessageState.QUEUED, NOW, "transient", "test", next_attempt_at=NOW),
        ],
        tz=TZ,
    )
    assert delivery.finish_occurrences(core.engine, now=NOW) == []
    [b2] = delivery.claim_due(core.engine, now=NOW, limit=10)
    delivery.record_outcomes(
        core.engine,
        [Outcome(b2, MessageState.FAILED, NOW, "permanent", "test", error_code="E")],
        tz=TZ,
    )
    done = delivery.finish_occurrences(core.engine, now=NOW)
    with Session(core.engine) as s:
        assert s.scalars(select(Occurrence.id).where(Occurrence.state == "done")).all() == done
    assert len(done) == 1


def test_counters_count_on_the_local_day_sent(core: Core) -> None:
    _queue(core, 1)
    [a] = delivery.claim_due(core.engine, now=NOW, limit=10)
    late = dt.datetime(2022, 10, 10, 16, 30, tzinfo=dt.UTC)  # 00:30 on the 11th in Shanghai
    delivery.record_outcomes(
        core.engine,
        [Outcome(a, MessageState.SENT, late, "sent", "test", provider_message_id="P-a")],
        tz=TZ,
    )
    delivery.apply_status(
        core.engine, "P-a", DeliveryStatus.DELIVERED, None, now=late + dt.timedelta(days=1), tz=TZ
    )
    with Session(core.engine) as s:
        rows = s.execute(select(SendCounter.day, SendCounter.sent, SendCounter.delivered)).all()
    assert rows == [(dt.date(2022, 10, 11), 1, 1)]
