"""The counts quotas are measured by.

Messages sent and delivered come from `send_counters` or its (day, town) and (day, carrier)
roll-ups (a sum over days × subjects rows, fast however large the message table grows, and still
there for months whose messages were pruned); people reached are distinct recipients, which counters
cannot add up, so they are counted from `messages` over the `sent_at` index.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import Engine, func, select

from scheduler.models import (
    CarrierDayCounter,
    Message,
    MessageState,
    Recipient,
    SendCounter,
    TownDayCounter,
)

By = Literal["town", "village", "carrier"]


def _source(by: By, towns: Sequence[str] | None) -> tuple[Any, list[Any]]:
    """The narrowest counter table that answers `by`, and its grouping columns: the (day, town)
    and (day, carrier) roll-ups hold the same sums as the fine rows in a ninth of the rows.
    Table columns, not ORM attributes: Core queries need no mapper configuration, which
    would cost the first status call after a restart ~30 ms."""
    if by == "town":
        town = TownDayCounter.__table__.c
        return town, [town.town_id]
    if by == "carrier" and not towns:
        carrier = CarrierDayCounter.__table__.c
        return carrier, [carrier.carrier]
    fine = SendCounter.__table__.c
    return fine, _group(fine, by)


def _group(table: Any, by: By) -> list[Any]:
    if by == "town":
        return [table.town_id]
    if by == "village":
        return [table.town_id, table.village_id]
    return [table.carrier]


def sum_counters(
    engine: Engine,
    *,
    first_day: dt.date,
    last_day: dt.date,
    by: By,
    towns: Sequence[str] | None = None,
) -> dict[tuple[str, ...], tuple[int, int]]:
    """(sent, delivered) per subject over local days first_day..last_day, both included.
    Keys: (town_id,), (town_id, village_id) or (carrier,)."""
    table, cols = _source(by, towns)
    stmt = (
        select(*cols, func.sum(table.sent), func.sum(table.delivered))
        .where(table.day >= first_day, table.day <= last_day)
        .group_by(*cols)
    )
    if towns:
        stmt = stmt.where(table.town_id.in_(list(towns)))
    with engine.connect() as conn:
        return {
            tuple(row[: len(cols)]): (int(row[-2] or 0), int(row[-1] or 0))
            for row in conn.execute(stmt)
        }


def counter_days(
    engine: Engine,
    *,
    first_day: dt.date,
    last_day: dt.date,
    by: By,
    towns: Sequence[str] | None = None,
) -> dict[tuple[str, ...], dict[dt.date, tuple[int, int]]]:
    """(sent, delivered) per subject and local day: for charts of sends against targets."""
    table, cols = _source(by, towns)
    stmt = (
        select(*cols, table.day, func.sum(table.sent), func.sum(table.delivered))
        .where(table.day >= first_day, table.day <= last_day)
        .group_by(*cols, table.day)
    )
    if towns:
        stmt = stmt.where(table.town_id.in_(list(towns)))
    out: dict[tuple[str, ...], dict[dt.date, tuple[int, int]]] = {}
    with engine.connect() as conn:
        for row in conn.execute(stmt):
            key = tuple(row[: len(cols)])
            out.setdefault(key, {})[row[len(cols)]] = (int(row[-2] or 0), int(row[-1] or 0))
    return out


def people_reached(
    engine: Engine,
    *,
    start: dt.datetime,
    end: dt.datetime,
    by: By,
    towns: Sequence[str] | None = None,
    by_residence: bool = False,
    states: Sequence[MessageState] = (MessageState.SENT, MessageState.DELIVERED),
) -> dict[tuple[str, ...], int]:
    """Distinct recipients with at least one message sent in [start, end) (aware instants) and
    now in one of `states`, per subject: a resident whose only message failed or came back
    undelivered was not reached. With by_residence the key gains the recipient's residence
    type (registered or migrant; recipients without one are left out)."""
    cols = _group(Message, by)
    stmt = select(*cols).where(
        Message.sent_at >= start, Message.sent_at < end, Message.state.in_(list(states))
    )
    if by_residence:
        stmt = stmt.join(Recipient, Recipient.id == Message.recipient_id).where(
            Recipient.residence.is_not(None)
        )
        cols = [*cols, Recipient.residence]
        stmt = stmt.add_columns(Recipient.residence)
    stmt = stmt.add_columns(func.count(Message.recipient_id.distinct())).group_by(*cols)
    if towns:
        stmt = stmt.where(Message.town_id.in_(list(towns)))
    with engine.connect() as conn:
        return {tuple(row[: len(cols)]): int(row[-1]) for row in conn.execute(stmt)}
