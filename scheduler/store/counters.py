"""Send counters: messages sent and delivered per local day, town, village and carrier.

The dispatcher and the status webhook call `bump_counters` in the same transaction as the
message change, so a counter never disagrees with the messages it counts, and quota queries
sum a few thousand counter rows instead of scanning the message table.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from scheduler.models import Message, MessageState, SendCounter

# Rows per INSERT statement: 6 parameters each stays far below SQLite's variable limit.
_CHUNK = 500

_Key = tuple[dt.date, str, str, str]


@dataclass(frozen=True)
class CounterIncrement:
    """A change to one counter row. `day` is the local day (district zone) of the message's
    sent_at, also for `delivered`, so a message is counted on the day it went out."""

    day: dt.date
    town_id: str
    village_id: str
    carrier: str
    sent: int = 0
    delivered: int = 0


def local_day(instant: dt.datetime, tz: ZoneInfo) -> dt.date:
    """The district-local day a quota counts an aware instant on."""
    if instant.tzinfo is None:
        raise ValueError("naive datetime given for a counter day")
    return instant.astimezone(tz).date()


def _aggregate(increments: Iterable[CounterIncrement]) -> dict[_Key, list[int]]:
    totals: dict[_Key, list[int]] = defaultdict(lambda: [0, 0])
    for inc in increments:
        t = totals[(inc.day, inc.town_id, inc.village_id, inc.carrier)]
        t[0] += inc.sent
        t[1] += inc.delivered
    return {k: v for k, v in totals.items() if v != [0, 0]}


def bump_counters(session: Session, increments: Iterable[CounterIncrement]) -> None:
    """Add increments to their counter rows, creating rows as needed, inside the caller's
    transaction. Increments for one key are summed first (PostgreSQL refuses to update a row
    twice in one statement) and rows are written in key order, so concurrent dispatchers lock
    rows in the same order and cannot deadlock each other."""
    totals = _aggregate(increments)
    if not totals:
        return
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    rows = [
        {
            "day": day,
            "town_id": town,
            "village_id": village,
            "carrier": carrier,
            "sent": sent,
            "delivered": delivered,
        }
        for (day, town, village, carrier), (sent, delivered) in sorted(totals.items())
    ]
    table = SendCounter.__table__
    for i in range(0, len(rows), _CHUNK):
        stmt = insert(table).values(rows[i : i + _CHUNK])
        stmt = stmt.on_conflict_do_update(
            index_elements=["day", "town_id", "village_id", "carrier"],
            set_={
                "sent": table.c.sent + stmt.excluded.sent,
                "delivered": table.c.delivered + stmt.excluded.delivered,
            },
        )
        session.execute(stmt)


def rebuild_counters(session: Session, tz: ZoneInfo, *, batch: int = 10_000) -> int:
    """Recompute every counter from the messages (after a restore or a manual fix): sent counts
    messages with a sent_at, delivered those in state delivered. Returns the rows written."""
    session.execute(delete(SendCounter))
    stmt = (
        select(Message.sent_at, Message.town_id, Message.village_id, Message.carrier, Message.state)
        .where(Message.sent_at.is_not(None))
        .execution_options(yield_per=batch)
    )
    incs = []
    for sent_at, town, village, carrier, state in session.execute(stmt):
        assert sent_at is not None  # the query asks for sent messages only
        incs.append(
            CounterIncrement(
                local_day(sent_at, tz),
                town,
                village,
                carrier,
                sent=1,
                delivered=1 if state == MessageState.DELIVERED else 0,
            )
        )
    totals = _aggregate(incs)
    bump_counters(
        session,
        (CounterIncrement(*key, sent=s, delivered=d) for key, (s, d) in totals.items()),
    )
    return len(totals)
