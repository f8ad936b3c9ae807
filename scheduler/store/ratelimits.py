"""The shared rate limits' seconds (`rate_slots`): one short transaction per claimed batch.

Reservations are serialised: on PostgreSQL by a transaction-scoped advisory lock, on SQLite
by its one writer (the transaction's first statement is a write, so it holds the write lock
from the start and never has to upgrade a read).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, delete, select, text

from scheduler.db import executemany, transaction
from scheduler.models import RateSlot
from scheduler.ratelimit import Limits, Need, assign

# pg_advisory_xact_lock key: "pingan rate slots".
_LOCK_KEY = 0x70696E67616E7273
# Seconds kept behind now (a few, for a look while debugging; nothing reads them).
_KEEP_SECONDS = 60


def reserve(engine: Engine, needs: Sequence[Need], limits: Limits, *, now: float) -> list[float]:
    """Take every message's tokens; returns when each may be sent (Unix time)."""
    if not needs:
        return []
    caps = limits.capacities()
    keys = sorted(caps)
    start = int(now)
    with transaction(engine) as s:
        conn = s.connection()
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        conn.execute(delete(RateSlot).where(RateSlot.second < start - _KEEP_SECONDS))
        rows = conn.execute(
            select(RateSlot.key, RateSlot.second, RateSlot.taken).where(
                RateSlot.key.in_(keys), RateSlot.second >= start
            )
        ).all()
        taken = {(r[0], int(r[1])): int(r[2]) for r in rows}
        times, changed = assign(needs, taken, caps, now)
        executemany(
            s,
            "INSERT INTO rate_slots (key, second, taken) VALUES (?, ?, ?) "
            "ON CONFLICT (key, second) DO UPDATE SET taken = excluded.taken",
            [(k, sec, taken[(k, sec)]) for k, sec in sorted(changed)],
        )
    return times


def taken(engine: Engine) -> dict[tuple[str, int], int]:
    """Every second's count (tests, and a look while debugging)."""
    with engine.connect() as conn:
        rows = conn.execute(select(RateSlot.key, RateSlot.second, RateSlot.taken)).all()
    return {(r[0], int(r[1])): int(r[2]) for r in rows}
