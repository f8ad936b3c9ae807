"""Delivery: claiming queued messages, recording what the provider said, applying statuses.

Claim rule: a claimed message is `sending` in its own commit before any provider call, so a
crash leaves it visible for reconciliation rather than lost. On PostgreSQL the claim uses
`FOR UPDATE SKIP LOCKED`, so several dispatchers can drain one outbox without sharing a row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Engine,
    case,
    delete,
    exists,
    func,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from scheduler.db import db_time_cache, executemany, transaction
from scheduler.logs import get_logger
from scheduler.models import (
    Message,
    MessageBody,
    MessageState,
    Occurrence,
    OccurrenceState,
    OptOut,
    PendingStatus,
)
from scheduler.providers.base import DeliveryStatus
from scheduler.store import optouts
from scheduler.store.counters import CounterIncrement, bump_counters, local_day
from scheduler.store.optouts import OPTED_OUT

log = get_logger("scheduler.store.delivery")

# How far a status has got; a callback only ever moves a message forward.
RANK = {
    MessageState.QUEUED: 0,
    MessageState.SENDING: 1,
    MessageState.UNKNOWN: 1,
    MessageState.SENT: 2,
    MessageState.DELIVERED: 3,
    MessageState.UNDELIVERED: 3,
    MessageState.FAILED: 3,
    MessageState.CANCELLED: 3,
}
# The neutral delivery statuses (every provider maps its own onto them) as message states.
STATE_OF = {
    DeliveryStatus.ACCEPTED: MessageState.SENT,
    DeliveryStatus.SENT: MessageState.SENT,
    DeliveryStatus.DELIVERED: MessageState.DELIVERED,
    DeliveryStatus.UNDELIVERED: MessageState.UNDELIVERED,
    DeliveryStatus.FAILED: MessageState.FAILED,
}


@dataclass(frozen=True)
class Claimed:
    id: int
    occurrence_id: int
    phone: str
    carrier: str
    town_id: str
    village_id: str
    segments: int
    body_id: int
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """What happened to one claimed message, to be recorded in one batch."""

    message: Claimed
    state: MessageState
    at: dt.datetime
    attempt_outcome: str
    provider: str
    provider_message_id: str | None = None
    error_code: str | None = None
    detail: str | None = None
    next_attempt_at: dt.datetime | None = None
    final_status: DeliveryStatus | None = None  # a simulated send's delivery outcome
    # The provider's catalogue says the number refused: it is recorded as opted out.
    opted_out: bool = False
    # The provider refused the whole campaign (unapproved signature or template): the
    # message's occurrence is paused, in the same transaction.
    halt: bool = False
    # False when nothing reached the provider (outside the sending hours, stopped, opted out
    # since the claim): no attempt row, and the claim's attempt count is given back.
    attempted: bool = True


# Claimed's fields, in order.
_CLAIMED = (
    Message.id,
    Message.occurrence_id,
    Message.phone,
    Message.carrier,
    Message.town_id,
    Message.village_id,
    Message.segments,
    Message.body_id,
    Message.attempts,
)


@dataclass(frozen=True)
class ClaimResult:
    claimed: list[Claimed]
    # Due messages met on the way whose number has opted out: cancelled, never handed over.
    cancelled: int


def claim_due(engine: Engine, *, now: dt.datetime, limit: int) -> list[Claimed]:
    """Mark up to `limit` due queued messages `sending` and return them, in send order."""
    return claim_batch(engine, now=now, limit=limit).claimed


def claim_batch(
    engine: Engine, *, now: dt.datetime, limit: int, exclude_phones: Collection[str] = ()
) -> ClaimResult:
    """Claim the next `limit` due queued messages; opted-out ones among them are cancelled.

    `exclude_phones`: numbers whose earlier message this dispatcher still has in flight are
    left for a later claim, so a refusal recorded for that message (an opt-out) cancels them
    before they are ever claimed.

    One statement: the due rows (locked, skipping rows another dispatcher holds, on
    PostgreSQL), each flagged by whether its number is in opt_outs, in a CTE; the same UPDATE
    marks the flagged ones `cancelled` (reason opted_out) and the rest `sending`, and returns
    them. An opted-out number is never claimed for sending.
    """
    with transaction(engine) as s:
        conn = s.connection()
        opted = exists().where(OptOut.phone == Message.phone)
        due = (
            select(Message.id, opted.label("opted"))
            .join(Occurrence, Occurrence.id == Message.occurrence_id)
            .where(
                Message.state == MessageState.QUEUED,
                Message.next_attempt_at <= now,
                Occurrence.paused.is_(False),
            )
            .order_by(Message.rank, Message.id)
            .limit(limit)
        )
        if exclude_phones:
            due = due.where(Message.phone.not_in(list(exclude_phones)))
        if conn.dialect.name == "postgresql":
            due = due.with_for_update(of=Message, skip_locked=True)
        due_cte = due.cte("due")
        returned = conn.execute(
            update(Message)
            .where(Message.id == due_cte.c.id)
            .values(
                state=case(
                    (due_cte.c.opted, literal(MessageState.CANCELLED.value)),
                    else_=literal(MessageState.SENDING.value),
                ),
                attempts=case((due_cte.c.opted, Message.attempts), else_=Message.attempts + 1),
                error_code=case((due_cte.c.opted, literal(OPTED_OUT)), else_=Message.error_code),
                status_at=now,
            )
            .returning(Message.state, Message.rank, *_CLAIMED)
        ).all()
        if not returned:
            return ClaimResult([], 0)
        claimed = [r for r in returned if r[0] != MessageState.CANCELLED]
        cancelled = len(returned) - len(claimed)
        if cancelled:
            log.info("dispatch.cancelled_opted_out", messages=cancelled)
        rows: list[Any] = sorted(claimed, key=lambda r: (r[1], r[2]))  # RETURNING has no order
        occ_ids = {r[3] for r in rows}
        if occ_ids:
            conn.execute(
                update(Occurrence)
                .where(Occurrence.id.in_(occ_ids), Occurrence.state == OccurrenceState.READY)
                .values(state=OccurrenceState.SENDING)
            )
    return ClaimResult([Claimed(*r[2:]) for r in rows], cancelled)


def opted_out_among(engine: Engine, phones: Iterable[str]) -> set[str]:
    """Which of these numbers have opted out (checked again right before a send)."""
    with transaction(engine) as s:
        return optouts.opted_out_among(s, list(phones))


def bodies(engine: Engine, ids: Iterable[int]) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(MessageBody.id, MessageBody.text).where(MessageBody.id.in_(list(set(ids))))
        ).all()
    return {r[0]: r[1] for r in rows}


def body_templates(engine: Engine, ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
    """Each body's template name and stored gateway parameters (JSON), for template-code
    gateways (scheduler.gateway_templates)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(MessageBody.id, MessageBody.template_name, MessageBody.params).where(
                MessageBody.id.in_(list(set(ids)))
            )
        ).all()
    return {r[0]: (r[1], r[2]) for r in rows}


# pg_try_advisory_lock key: "pingan reconcile".
_RECONCILE_LOCK = 0x70696E67616E7263


@contextmanager
def reconciling(engine: Engine) -> Iterator[bool]:
    """Whether this dispatcher may settle messages left `sending` now: one at a time.

    Two dispatchers settling the same messages would both record them (a message found at
    the provider counted twice). On PostgreSQL a session advisory lock, held while the
    messages are looked up and recorded, lets one through and the others skip (they find
    nothing left next time); it goes with the session if the dispatcher dies. On SQLite
    (one dispatcher process) always yes.
    """
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as conn:
        got = bool(
            conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _RECONCILE_LOCK}).scalar()
        )
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _RECONCILE_LOCK})
                conn.commit()


def stuck_sending(
    engine: Engine, *, claimed_before: dt.datetime
) -> list[tuple[Claimed, dt.datetime | None]]:
    """Messages `sending` since before `claimed_before` (left by a crash), with their claim time.

    The cut-off keeps a dispatcher from settling messages another live dispatcher is sending.
    """
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_CLAIMED, Message.status_at).where(
                Message.state == MessageState.SENDING, Message.status_at < claimed_before
            )
        ).all()
    return [(Claimed(*r[:9]), r[9]) for r in rows]


def awaiting_receipt(
    engine: Engine,
    *,
    provider: str,
    sent_before: dt.datetime,
    checked_before: dt.datetime,
    limit: int,
) -> list[tuple[Claimed, dt.datetime]]:
    """Messages the provider took (`sent`) but no receipt has settled, sent before
    `sent_before` and not looked up since `checked_before`, least recently looked up first,
    with their send time (a look-up's lower bound)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_CLAIMED, Message.sent_at)
            .where(
                Message.state == MessageState.SENT,
                Message.provider == provider,
                Message.sent_at < sent_before,
                Message.status_at < checked_before,
            )
            .order_by(Message.status_at, Message.id)
            .limit(limit)
        ).all()
    # The query asks for sent_at < sent_before, so it is never None here.
    return [(Claimed(*r[:9]), r[9]) for r in rows if r[9] is not None]


def mark_looked_up(engine: Engine, ids: Iterable[int], *, now: dt.datetime) -> None:
    """Note a look-up that settled nothing (status_at), so the next pull takes others first;
    only messages still `sent` (a receipt that landed meanwhile keeps its own time)."""
    wanted = list(ids)
    if not wanted:
        return
    with transaction(engine) as s:
        s.execute(
            update(Message)
            .where(Message.id.in_(wanted), Message.state == MessageState.SENT)
            .values(status_at=now)
        )


_SENT_STATES = frozenset({MessageState.SENT, MessageState.DELIVERED, MessageState.UNDELIVERED})


def record_outcomes(
    engine: Engine, outcomes: Sequence[Outcome], *, tz: ZoneInfo
) -> list[tuple[str, str]]:
    """Record a batch of outcomes, their attempts and counters in one transaction.

    In the same transaction: numbers the provider says refused (`opted_out`) are recorded as
    opted out and their queued messages cancelled, a message going back to the queue whose
    number opted out meanwhile is cancelled, and the occurrences of `halt` outcomes are paused.
    Returns the (phone, source) pairs opted out.
    """
    if not outcomes:
        return []
    increments: list[CounterIncrement] = []
    days: dict[dt.datetime, dt.date] = {}
    with transaction(engine) as s:
        t = db_time_cache(s.get_bind().dialect.name)
        updates: list[tuple[Any, ...]] = []
        for o in outcomes:
            state = o.state
            if state == MessageState.SENT and o.final_status is not None:
                state = STATE_OF[o.final_status]
            sent = state in _SENT_STATES or (
                state == MessageState.FAILED and o.provider_message_id is not None
            )
            at = t(o.at)
            updates.append(
                (
                    str(state),
                    o.provider,
                    o.provider_message_id,
                    o.error_code,
                    at if sent else None,
                    at,
                    t(o.next_attempt_at),
                    0 if o.attempted else 1,
                    o.message.id,
                )
            )
            if sent:
                m = o.message
                day = days.get(o.at)
                if day is None:
                    day = days[o.at] = local_day(o.at, tz)
                increments.append(
                    CounterIncrement(
                        day,
                        m.town_id,
                        m.village_id,
                        m.carrier,
                        sent=1,
                        delivered=1 if state == MessageState.DELIVERED else 0,
                    )
                )
        executemany(
            s,
            "UPDATE messages SET state = ?, provider = ?, provider_message_id = ?, "
            "error_code = ?, sent_at = ?, status_at = ?, next_attempt_at = ?, "
            "attempts = attempts - ? WHERE id = ?",
            updates,
        )
        executemany(
            s,
            "INSERT INTO attempts (message_id, attempted_at, outcome, error_code, detail) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (o.message.id, t(o.at), o.attempt_outcome, o.error_code, o.detail)
                for o in outcomes
                if o.attempted
            ],
        )
        bump_counters(s, increments)
        pmids = [o.provider_message_id for o in outcomes if o.provider_message_id]
        if pmids:
            pending = (
                s.execute(select(PendingStatus).where(PendingStatus.provider_message_id.in_(pmids)))
                .scalars()
                .all()
            )
            for p in sorted(pending, key=lambda p: p.id):
                _apply_status(s, p.provider_message_id, p.status, p.error_code, p.received_at, tz)
            if pending:
                s.execute(
                    delete(PendingStatus).where(PendingStatus.id.in_([p.id for p in pending]))
                )
        halted = {o.message.occurrence_id for o in outcomes if o.halt}
        if halted:
            s.execute(update(Occurrence).where(Occurrence.id.in_(halted)).values(paused=True))
        refused = [o for o in outcomes if o.opted_out]
        latest = max(o.at for o in outcomes)
        for o in refused:
            optouts.insert_opt_outs(
                s,
                [o.message.phone],
                source="provider",
                reason=f"error {o.error_code}",
                reply_text=None,
                now=o.at,
            )
        optouts.cancel_opted_out_messages(
            s, [o.message.id for o in outcomes if o.state == MessageState.QUEUED], now=latest
        )
    return [(o.message.phone, f"provider:{o.error_code}") for o in refused]


def _apply_status(
    s: Session,
    provider_message_id: str,
    status: str,
    error_code: str | None,
    at: dt.datetime,
    tz: ZoneInfo,
) -> str:
    try:
        new = STATE_OF[DeliveryStatus(status)]
    except ValueError:  # not a neutral status (a kept receipt from before they were neutral)
        return "ignored"
    msg = s.execute(
        select(Message).where(Message.provider_message_id == provider_message_id).with_for_update()
    ).scalar_one_or_none()
    if msg is None:
        return "unmatched"
    if RANK[new] <= RANK[msg.state]:
        return "unchanged"
    was = msg.state
    msg.state = new
    msg.status_at = at
    if error_code:
        msg.error_code = error_code
    if msg.sent_at is None:
        msg.sent_at = at
        bump_counters(
            s,
            [CounterIncrement(local_day(at, tz), msg.town_id, msg.village_id, msg.carrier, sent=1)],
        )
    if new == MessageState.DELIVERED and was != MessageState.DELIVERED:
        bump_counters(
            s,
            [
                CounterIncrement(
                    local_day(msg.sent_at, tz),
                    msg.town_id,
                    msg.village_id,
                    msg.carrier,
                    delivered=1,
                )
            ],
        )
    return "applied"


def apply_status(
    engine: Engine,
    provider_message_id: str,
    status: DeliveryStatus,
    error_code: str | None,
    *,
    now: dt.datetime,
    tz: ZoneInfo,
) -> str:
    """Apply a delivery receipt; keeps it for later if the send is not recorded yet.

    Statuses only move forward (RANK), so a receipt repeated or arriving out of order changes
    nothing. Returns applied, unchanged, ignored or pending.
    """
    with transaction(engine) as s:
        result = _apply_status(s, provider_message_id, status, error_code, now, tz)
        if result == "unmatched":
            s.add(
                PendingStatus(
                    provider_message_id=provider_message_id,
                    status=DeliveryStatus(status).value,
                    error_code=error_code,
                    received_at=now,
                )
            )
            return "pending"
        return result


def finish_occurrences(engine: Engine, *, now: dt.datetime) -> list[int]:
    """Occurrences being sent with nothing left queued or sending become done.

    Cancelled (opted out), like sent or failed, is final: it keeps no occurrence open.
    """
    with transaction(engine) as s:
        open_ids = set(
            s.scalars(
                select(Message.occurrence_id)
                .where(Message.state.in_([MessageState.QUEUED, MessageState.SENDING]))
                .distinct()
            )
        )
        candidates = list(
            s.scalars(
                select(Occurrence.id).where(
                    Occurrence.state.in_([OccurrenceState.READY, OccurrenceState.SENDING])
                )
            )
        )
        done = [i for i in candidates if i not in open_ids]
        if done:
            s.execute(
                update(Occurrence)
                .where(Occurrence.id.in_(done))
                .values(state=OccurrenceState.DONE, finished_at=now)
            )
    return done


def has_due(engine: Engine, *, now: dt.datetime) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                select(func.count())
                .select_from(Message)
                .join(Occurrence, Occurrence.id == Message.occurrence_id)
                .where(
                    Message.state == MessageState.QUEUED,
                    Message.next_attempt_at <= now,
                    Occurrence.paused.is_(False),
                )
                .limit(1)
            ).scalar_one()
            > 0
        )


def next_due_at(engine: Engine) -> dt.datetime | None:
    with engine.connect() as conn:
        value = conn.execute(
            select(func.min(Message.next_attempt_at))
            .join(Occurrence, Occurrence.id == Message.occurrence_id)
            .where(Message.state == MessageState.QUEUED, Occurrence.paused.is_(False))
        ).scalar()
    if value is None:
        return None
    assert isinstance(value, dt.datetime)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def expire_pending_statuses(engine: Engine, *, older_than: dt.datetime) -> int:
    """Drop status callbacks kept for a message id that never appeared (another account's
    message, a test callback): they would otherwise be kept for ever."""
    with transaction(engine) as s:
        result = s.execute(delete(PendingStatus).where(PendingStatus.received_at < older_than))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def unfinished(engine: Engine) -> dict[str, int]:
    """What a drained outbox should not hold: queued (never tried), retrying and sending."""
    tried = Message.attempts > literal_column("0")  # the same SQL text in SELECT and GROUP BY
    with engine.connect() as conn:
        rows = conn.execute(
            select(Message.state, tried, func.count())
            .where(Message.state.in_([MessageState.QUEUED, MessageState.SENDING]))
            .group_by(Message.state, tried)
        ).all()
    out = {"queued": 0, "retrying": 0, "sending": 0}
    for state, was_tried, n in rows:
        if state == MessageState.SENDING:
            out["sending"] += int(n)
        else:
            out["retrying" if was_tried else "queued"] += int(n)
    return out


def state_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(Message.state, func.count()).group_by(Message.state)).all()
    return {str(r[0]): int(r[1]) for r in rows}


# Messages not yet sent: shown as pending by the day they were queued, never mixed into the
# counts of messages sent.
PENDING_STATES = (MessageState.QUEUED, MessageState.SENDING)


def counted_at() -> Any:
    """When a message counts, as SQL: the instant it was sent; a message that finished without
    ever being sent (refused by the provider) counts when it finished. The same local day the
    send counters use (scheduler.store.counters.local_day), so delivery stats, quota status
    and the report agree."""
    return func.coalesce(Message.sent_at, Message.status_at, Message.queued_at)


def delivery_breakdown(
    engine: Engine,
    *,
    by: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    tz: ZoneInfo,
) -> list[dict[str, object]]:
    """Messages per state, grouped by town, carrier, error or local day. Messages sent (or
    finished) count at counted_at(); messages still queued or sending count by the time they
    were queued, under their own states `queued` and `sending`."""
    columns = {"town": Message.town_id, "carrier": Message.carrier, "error": Message.error_code}
    out: dict[str, dict[str, int]] = {}
    pending = [s.value for s in PENDING_STATES]
    for when, is_pending in ((counted_at(), False), (Message.queued_at, True)):
        group: list[Any] = []
        if by in columns:
            group = [columns[by]]
        elif by == "day":
            group = [when]
        q: Any = select(*group, Message.state, func.count())
        q = q.where(Message.state.in_(pending) if is_pending else Message.state.not_in(pending))
        if start is not None:
            q = q.where(when >= start)
        if end is not None:
            q = q.where(when < end)
        q = q.group_by(*group, Message.state)
        with engine.connect() as conn:
            raw = conn.execute(q).all()
        for row in raw:
            if group:
                key_value, state, n = row
                if by == "day":
                    key = _local_day_key(key_value, tz)
                else:
                    key = str(key_value) if key_value is not None else "-"
            else:
                state, n = row
                key = "all"
            bucket = out.setdefault(key, {})
            bucket[str(state)] = bucket.get(str(state), 0) + int(n)
    return [{"key": k, **v} for k, v in sorted(out.items())]


def _local_day_key(value: Any, tz: ZoneInfo) -> str:
    if isinstance(value, str):  # SQLite's coalesce() hands back the stored text
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return aware.astimezone(tz).date().isoformat()


def top_errors(
    engine: Engine, *, start: dt.datetime | None, end: dt.datetime | None, limit: int = 10
) -> list[tuple[str, int]]:
    """The commonest error codes of messages counted in [start, end) (see counted_at)."""
    when = counted_at()
    q = select(Message.error_code, func.count()).where(Message.error_code.is_not(None))
    if start is not None:
        q = q.where(when >= start)
    if end is not None:
        q = q.where(when < end)
    q = q.group_by(Message.error_code).order_by(func.count().desc()).limit(limit)
    with engine.connect() as conn:
        return [(str(r[0]), int(r[1])) for r in conn.execute(q).all()]
