"""The audit log, as the HTTP API writes and reads it: by token name and peer address.

One table holds the API's entries and the console's (scheduler/store/users.py); the API's
structured detail is kept as JSON text in the `detail` column.
"""

from __future__ import annotations

import datetime as dt
import json
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
        at=at,
        actor=who[:64],
        action=action[:64],
        subject=str(detail.get("subject", ""))[:255],
        peer=peer[:64],
        detail=json.dumps(detail, ensure_ascii=False, default=str),
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
        stmt = stmt.where(AuditEntry.actor == who)
    if action is not None:
        stmt = stmt.where(AuditEntry.action == action)
    with engine.connect() as conn:
        return [
            Entry(r.id, r.at, r.actor, r.action, r.peer or "", _detail(r.detail))
            for r in conn.execute(stmt)
        ]


def _detail(text: str | None) -> dict[str, Any]:
    """The API's JSON detail; a console entry's plain text under "text"."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"text": text}
