"""The monthly report's manual columns per town and month, and which months are filed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from scheduler.db import transaction
from scheduler.exceptions import PingAnError
from scheduler.models import Activity, FiledReport, Message, MessageState, Occurrence

ACTIVITY_FIELDS = (
    "households_visited",
    "leaflets",
    "banners",
    "boards",
    "wechat_posts",
    "questionnaires",
    "volunteer_activities",
    "other",
    "description",
)


def is_filed(engine: Engine, month: str) -> bool:
    with Session(engine) as s:
        return s.get(FiledReport, month) is not None


def upsert_activity(
    engine: Engine, town_id: str, month: str, values: dict[str, Any], *, now: dt.datetime
) -> None:
    """Create or edit a town's row for a month; refused once the month's report is filed."""
    with transaction(engine) as s:
        if s.get(FiledReport, month) is not None:
            raise PingAnError(
                f"the report for {month} is filed; its activities can no longer change"
            )
        row = s.get(Activity, (town_id, month))
        if row is None:
            row = Activity(
                town_id=town_id, month=month, **{f: _default(f) for f in ACTIVITY_FIELDS}
            )
            s.add(row)
        for key, value in values.items():
            if key in ACTIVITY_FIELDS and value is not None:
                setattr(row, key, value)
        row.updated_at = now


def _default(name: str) -> Any:
    return "" if name in ("other", "description") else 0


def activities_for(engine: Engine, month: str) -> dict[str, Activity]:
    with Session(engine) as s:
        return {a.town_id: a for a in s.scalars(select(Activity).where(Activity.month == month))}


def mark_filed(engine: Engine, month: str, path: str, *, now: dt.datetime) -> None:
    with transaction(engine) as s:
        if s.get(FiledReport, month) is None:
            s.add(FiledReport(month=month, filed_at=now, path=path))


# Reached: a message went out (sent or delivered); a failed or undelivered one reaches nobody.
REACHED = (MessageState.SENT, MessageState.DELIVERED)
DELIVERED = (MessageState.DELIVERED,)


def reach_before(
    engine: Engine,
    town_id: str,
    village_id: str,
    start: dt.datetime,
    end: dt.datetime,
    states: Sequence[MessageState] = REACHED,
) -> dict[str, int]:
    """Distinct residents of a village sent a message in [start, end), per occurrence key
    (the caller folds keys into campaigns)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Occurrence.campaign, func.count(Message.recipient_id.distinct()))
            .join(Occurrence, Occurrence.id == Message.occurrence_id)
            .where(
                Message.town_id == town_id,
                Message.village_id == village_id,
                Message.sent_at >= start,
                Message.sent_at < end,
                Message.state.in_(list(states)),
            )
            .group_by(Occurrence.campaign)
        ).all()
    out: dict[str, int] = {}
    for campaign, n in rows:
        key = str(campaign)
        out[key] = out.get(key, 0) + int(n)
    return out


def distinct_reached(
    engine: Engine,
    town_id: str,
    village_id: str,
    start: dt.datetime,
    end: dt.datetime,
    states: Sequence[MessageState] = REACHED,
) -> int:
    """Distinct residents of a village with a message sent in [start, end) now in `states`."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count(Message.recipient_id.distinct())).where(
                    Message.town_id == town_id,
                    Message.village_id == village_id,
                    Message.sent_at >= start,
                    Message.sent_at < end,
                    Message.state.in_(list(states)),
                )
            ).scalar_one()
        )
