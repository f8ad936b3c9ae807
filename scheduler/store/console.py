"""The few queries the console needs that no other store module has: messages per occurrence
and state, today's sending, failed occurrences, and the template revisions table."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from scheduler.db import transaction
from scheduler.models import (
    Message,
    MessageState,
    Occurrence,
    OccurrenceState,
    TemplateRevision,
)
from scheduler.store.optouts import insert_opt_outs
from scheduler.store.users import AuditRecord, add_audit_row


def set_paused(engine: Engine, occurrence_id: int, paused: bool, audit: AuditRecord) -> bool:
    """Pause or resume, and its audit row, in one transaction; False for no such occurrence."""
    with transaction(engine) as s:
        result = s.execute(
            update(Occurrence).where(Occurrence.id == occurrence_id).values(paused=paused)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        add_audit_row(s, audit)
        return True


def opt_out(
    engine: Engine, phone: str, *, reason: str | None, now: dt.datetime, audit: AuditRecord
) -> tuple[int, int]:
    """One refusal, its queued messages cancelled and its audit row, in one transaction."""
    with transaction(engine) as s:
        counts = insert_opt_outs(
            s, [phone], source="console", reason=reason, reply_text=None, now=now
        )
        add_audit_row(s, audit)
        return counts


def occurrence_state_counts(
    engine: Engine, occurrence_ids: Sequence[int], *, town_id: str | None = None
) -> dict[int, dict[str, int]]:
    """Messages per occurrence and state (over the (occurrence_id, recipient_id) index)."""
    if not occurrence_ids:
        return {}
    stmt = (
        select(Message.occurrence_id, Message.state, func.count())
        .where(Message.occurrence_id.in_(list(occurrence_ids)))
        .group_by(Message.occurrence_id, Message.state)
    )
    if town_id is not None:
        stmt = stmt.where(Message.town_id == town_id)
    out: dict[int, dict[str, int]] = {}
    with engine.connect() as conn:
        for occ, state, n in conn.execute(stmt):
            out.setdefault(int(occ), {})[str(MessageState(state))] = int(n)
    return out


def pending_count(engine: Engine, *, town_id: str | None = None) -> int:
    """Messages waiting to be sent (queued or being sent), over the claim index."""
    stmt = select(func.count()).where(
        Message.state.in_([MessageState.QUEUED, MessageState.SENDING])
    )
    if town_id is not None:
        stmt = stmt.where(Message.town_id == town_id)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def failed_since(engine: Engine, since: dt.datetime, *, town_id: str | None = None) -> int:
    """Messages failed whose last status came at or after `since` (claim index on state)."""
    stmt = select(func.count()).where(
        Message.state == MessageState.FAILED, Message.status_at >= since
    )
    if town_id is not None:
        stmt = stmt.where(Message.town_id == town_id)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def failed_occurrences(engine: Engine, *, limit: int = 20) -> list[Occurrence]:
    with engine.connect() as conn:
        ids = [
            int(i)
            for i in conn.execute(
                select(Occurrence.id)
                .where(Occurrence.state == OccurrenceState.FAILED)
                .order_by(Occurrence.scheduled_at.desc())
                .limit(limit)
            ).scalars()
        ]
    with Session(engine) as s:
        return list(s.scalars(select(Occurrence).where(Occurrence.id.in_(ids))))


@dataclass(frozen=True)
class Revision:
    id: int
    name: str
    source_hash: str
    content: str
    author: str
    created_at: dt.datetime


def _revision(row: TemplateRevision) -> Revision:
    return Revision(row.id, row.name, row.source_hash, row.content, row.author, row.created_at)


def add_revision(
    engine: Engine,
    *,
    name: str,
    source_hash: str,
    content: str,
    author: str,
    at: dt.datetime,
    audit: AuditRecord | None = None,
) -> Revision:
    """A template's text as saved, and the audit row of the change, in one transaction."""
    with transaction(engine) as s:
        if audit is not None:
            add_audit_row(s, audit)
        row = TemplateRevision(
            name=name, source_hash=source_hash, content=content, author=author, created_at=at
        )
        s.add(row)
        s.flush()
        return _revision(row)


def revisions(engine: Engine, name: str, *, limit: int = 50) -> list[Revision]:
    """Newest first."""
    with Session(engine) as s:
        rows = s.scalars(
            select(TemplateRevision)
            .where(TemplateRevision.name == name)
            .order_by(TemplateRevision.id.desc())
            .limit(limit)
        )
        return [_revision(r) for r in rows]


def revision_with_hash(engine: Engine, name: str, source_hash: str) -> Revision | None:
    with Session(engine) as s:
        row = s.scalars(
            select(TemplateRevision)
            .where(TemplateRevision.name == name, TemplateRevision.source_hash == source_hash)
            .order_by(TemplateRevision.id.desc())
            .limit(1)
        ).first()
        return _revision(row) if row else None
