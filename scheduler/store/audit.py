"""The audit log: every change made through the HTTP API, by token name and peer address."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from scheduler.models import AuditEntry


@dataclass(frozen=True)
class Entry:
    id: int
    at: dt.datetime
    who: str
    action: str
    peer: str
    detail: dict[str, Any]


def record(
    bind: Engine | Connection,
    *,
    who: str,
    action: str,
    peer: str,
    detail: dict[str, Any],
    at: dt.datetime,
) -> None:
    """Append one entry; given a Connection, in the caller's transaction (with the change)."""
    stmt = insert(AuditEntry).values(
        at=at, who=who[:64], action=action[:64], peer=peer[:64], detail=detail
    )
    if isinstance(bind, Connection):
        bind.execute(stmt)
    else:
        with bind.begin() as conn:
            conn.execute(stmt)


def entries(
    engine: Engine, *, limit: int = 100, who: str | None = None, action: str | None = None
) -> list[Entry]:
    """The latest entries first."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if who is not None:
        stmt = stmt.where(AuditEntry.who == who)
    if action is not None:
        stmt = stmt.where(AuditEntry.action == action)
    with engine.connect() as conn:
        return [
            Entry(r.id, r.at, r.who, r.action, r.peer, dict(r.detail or {}))
            for r in conn.execute(stmt)
        ]
