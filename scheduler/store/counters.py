"""Send counters: messages sent and delivered per local day, town, village and carrier.

The dispatcher and the status webhook call `bump_counters` in the same transaction as the
message change, so a counter never disagrees with the messages it counts, and quota queries
sum a few thousand counter rows instead of scanning the message table. The same call keeps two
roll-ups, by (day, town) and by (day, carrier), which town and carrier windows read: a month of
1,000 towns is 31,000 rows, not the 280,000 fine rows of its villages and carriers. They are the
record of sends for months whose messages were pruned, so nothing rebuilds them from messages
except `rebuild_counters`.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Date, TextClause, bindparam, delete, func, select, text
from sqlalchemy import insert as insert_into
from sqlalchemy.orm import Session

from scheduler.models import (
    CarrierDayCounter,
    Message,
    MessageState,
    SendCounter,
    TownDayCounter,
)

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


@functools.lru_cache(maxsize=8)
def _upsert_sql(table: str, keys: tuple[str, ...]) -> TextClause:
    """One row's upsert, the same SQL on SQLite and PostgreSQL: run as an executemany it is
    compiled once per process, where a multi-row VALUES statement was compiled per chunk."""
    cols = ", ".join(keys)
    return text(
        f"INSERT INTO {table} ({cols}, sent, delivered)"
        f" VALUES ({', '.join(':' + k for k in keys)}, :sent, :delivered)"
        f" ON CONFLICT ({cols}) DO UPDATE SET sent = {table}.sent + excluded.sent,"
        f" delivered = {table}.delivered + excluded.delivered"
    ).bindparams(bindparam("day", type_=Date))


def _upsert(
    session: Session,
    table: str,
    keys: tuple[str, ...],
    totals: dict[tuple[Any, ...], list[int]],
) -> None:
    """Add (sent, delivered) to the rows of `table` keyed by `keys`, in key order."""
    rows = [
        {**dict(zip(keys, key, strict=True)), "sent": sent, "delivered": delivered}
        for key, (sent, delivered) in sorted(totals.items())
        if sent or delivered
    ]
    if rows:
        session.execute(_upsert_sql(table, keys), rows)


def bump_counters(session: Session, increments: Iterable[CounterIncrement]) -> None:
    """Add increments to their counter rows and to the (day, town) and (day, carrier) roll-ups,
    creating rows as needed, inside the caller's transaction (so the roll-ups always equal the
    sums of the fine rows). Increments for one key are summed first (PostgreSQL refuses to
    update a row twice in one statement) and every table is written in key order, fine rows
    first, so concurrent dispatchers lock rows in the same order and cannot deadlock."""
    totals = _aggregate(increments)
    if not totals:
        return
    towns: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
    carriers: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
    for (day, town, _village, carrier), (sent, delivered) in totals.items():
        t = towns[(day, town)]
        t[0] += sent
        t[1] += delivered
        c = carriers[(day, carrier)]
        c[0] += sent
        c[1] += delivered
    _upsert(session, "send_counters", ("day", "town_id", "village_id", "carrier"), totals)
    _upsert(session, "send_counters_town", ("day", "town_id"), towns)
    _upsert(session, "send_counters_carrier", ("day", "carrier"), carriers)


def rebuild_rollups(session: Session) -> None:
    """Recompute the (day, town) and (day, carrier) roll-ups from the fine counter rows."""
    session.execute(delete(TownDayCounter))
    session.execute(delete(CarrierDayCounter))
    fine = SendCounter.__table__
    session.execute(
        insert_into(TownDayCounter).from_select(
            ["day", "town_id", "sent", "delivered"],
            select(
                fine.c.day, fine.c.town_id, func.sum(fine.c.sent), func.sum(fine.c.delivered)
            ).group_by(fine.c.day, fine.c.town_id),
        )
    )
    session.execute(
        insert_into(CarrierDayCounter).from_select(
            ["day", "carrier", "sent", "delivered"],
            select(
                fine.c.day, fine.c.carrier, func.sum(fine.c.sent), func.sum(fine.c.delivered)
            ).group_by(fine.c.day, fine.c.carrier),
        )
    )


def rebuild_counters(session: Session, tz: ZoneInfo, *, batch: int = 10_000) -> int:
    """Recompute the counters and roll-ups from the messages (after a restore or a manual fix):
    sent counts messages with a sent_at, delivered those in state delivered. Returns the fine
    rows written. Messages are summed as they stream, so memory follows the counters' size.

    Only days from the earliest send still in `messages` are rebuilt: the counters are the
    only record quotas and reports keep of months `pingan db prune` archived and dropped, so
    days before that are left as they are."""
    first = session.execute(select(func.min(Message.sent_at))).scalar()
    if first is None:
        return 0
    since = local_day(first, tz)
    session.execute(delete(SendCounter).where(SendCounter.day >= since))
    session.execute(delete(TownDayCounter).where(TownDayCounter.day >= since))
    session.execute(delete(CarrierDayCounter).where(CarrierDayCounter.day >= since))
    stmt = (
        select(Message.sent_at, Message.town_id, Message.village_id, Message.carrier, Message.state)
        .where(Message.sent_at.is_not(None))
        .execution_options(yield_per=batch)
    )
    totals: dict[_Key, list[int]] = defaultdict(lambda: [0, 0])
    for sent_at, town, village, carrier, state in session.execute(stmt):
        assert sent_at is not None  # the query asks for sent messages only
        t = totals[(local_day(sent_at, tz), town, village, carrier)]
        t[0] += 1
        if state == MessageState.DELIVERED:
            t[1] += 1
    bump_counters(
        session,
        (CounterIncrement(*key, sent=s, delivered=d) for key, (s, d) in totals.items()),
    )
    return len(totals)
