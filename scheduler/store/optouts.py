"""Opt-outs inside a caller's transaction: the refusal row and the cancellations it causes.

Recording a refusal and cancelling that resident's queued (and retrying) messages happen in one
transaction, so a crash leaves either both or neither. Messages already `sending` keep their
normal fate; the dispatcher cancels them if they come back to the queue.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from scheduler.models import Message, MessageState, OptOut, Recipient

# Recorded as a cancelled message's error_code: `delivery stats` counts it by reason.
OPTED_OUT = "opted_out"
_CHUNK = 5000


def insert_opt_outs(
    s: Session,
    phones: Sequence[str],
    *,
    source: str,
    reason: str | None,
    reply_text: str | None,
    now: dt.datetime,
) -> tuple[int, int]:
    """Record refusals and cancel the residents' queued messages; returns (new, cancelled).

    A number already recorded keeps its first source, reason and time; its queued messages are
    cancelled all the same (ones queued since by an expansion that raced the refusal).
    """
    unique = sorted(set(phones))
    source = source[:32]
    reason = reason[:255] if reason else None
    reply_text = reply_text[:1000] if reply_text else None
    dialect: Any = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    new = cancelled = 0
    for i in range(0, len(unique), _CHUNK):
        chunk = unique[i : i + _CHUNK]
        known = set(s.scalars(select(OptOut.phone).where(OptOut.phone.in_(chunk))))
        fresh = [p for p in chunk if p not in known]
        if fresh:
            s.execute(
                dialect.insert(OptOut).on_conflict_do_nothing(index_elements=["phone"]),
                [
                    {
                        "phone": p,
                        "source": source,
                        "reason": reason,
                        "reply_text": reply_text,
                        "created_at": now,
                    }
                    for p in fresh
                ],
            )
            new += len(fresh)
        cancelled += cancel_queued(s, chunk, now=now)
    return new, cancelled


def cancel_queued(s: Session, phones: Sequence[str], *, now: dt.datetime) -> int:
    """Cancel the queued and retrying messages of these residents (reason `opted_out`).

    Found through the recipients' ids, which the messages' (recipient, queued_at) index serves.
    """
    if not phones:
        return 0
    ids = select(Recipient.id).where(Recipient.phone.in_(list(phones))).scalar_subquery()
    result = s.execute(
        update(Message)
        .where(Message.state == MessageState.QUEUED, Message.recipient_id.in_(ids))
        .values(
            state=MessageState.CANCELLED,
            error_code=OPTED_OUT,
            status_at=now,
            next_attempt_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def cancel_opted_out_messages(s: Session, message_ids: Sequence[int], *, now: dt.datetime) -> int:
    """Of these messages, cancel the queued ones whose number opted out (back from a retry)."""
    if not message_ids:
        return 0
    result = s.execute(
        update(Message)
        .where(
            Message.id.in_(list(message_ids)),
            Message.state == MessageState.QUEUED,
            exists().where(OptOut.phone == Message.phone),
        )
        .values(
            state=MessageState.CANCELLED,
            error_code=OPTED_OUT,
            status_at=now,
            next_attempt_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def opted_out_among(s: Session, phones: Sequence[str]) -> set[str]:
    out: set[str] = set()
    unique = sorted(set(phones))
    for i in range(0, len(unique), _CHUNK):
        out.update(s.scalars(select(OptOut.phone).where(OptOut.phone.in_(unique[i : i + _CHUNK]))))
    return out
