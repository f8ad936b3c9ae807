"""Sends carriers and towns report for their own channels: stored rows and their sums."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from scheduler.db import transaction
from scheduler.models import ReportedSend

By = Literal["town", "village", "carrier"]
KEY_COLUMNS = ("source_kind", "source_id", "subject_kind", "subject_key", "period")


def upsert_sends(engine: Engine, rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """Insert new rows and update known ones (same source, subject and period), all in one
    transaction; (inserted, updated)."""
    inserted = updated = 0
    with transaction(engine) as s:
        for row in rows:
            key = tuple(row[k] for k in KEY_COLUMNS)
            existing = s.get(ReportedSend, key)
            if existing is None:
                s.add(ReportedSend(**row))
                inserted += 1
                continue
            for name, value in row.items():
                setattr(existing, name, value)
            updated += 1
    return inserted, updated


def sum_reported(
    engine: Engine,
    *,
    first_day: dt.date,
    last_day: dt.date,
    by: By,
    column: str,
    towns: Sequence[str] | None = None,
) -> dict[tuple[str, ...], int]:
    """A reported column summed per subject over reports whose last day lies in
    first_day..last_day (a week straddling two months counts in the month it ends in).
    A town's figure includes what was reported for its villages."""
    # Columns of the table, not ORM attributes: a plain Core query needs no mapper
    # configuration, which would otherwise cost the first quota status call after a restart.
    t = ReportedSend.__table__.c
    value = t[column]
    stmt: Any
    if by == "carrier":
        cols: list[Any] = [t.carrier]
        kinds = ["carrier"]
    elif by == "town":
        cols = [t.town_id]
        kinds = ["town", "village"]
    else:
        cols = [t.town_id, t.village_id]
        kinds = ["village"]
    stmt = (
        select(*cols, func.sum(value))
        .where(
            t.subject_kind.in_(kinds),
            t.last_day >= first_day,
            t.last_day <= last_day,
        )
        .group_by(*cols)
    )
    if towns:
        stmt = stmt.where(t.town_id.in_(list(towns)))
    with engine.connect() as conn:
        return {tuple(row[:-1]): int(row[-1] or 0) for row in conn.execute(stmt)}


def list_sends(engine: Engine, first_day: dt.date, last_day: dt.date) -> list[ReportedSend]:
    with Session(engine) as s:
        return list(
            s.scalars(
                select(ReportedSend)
                .where(ReportedSend.last_day >= first_day, ReportedSend.last_day <= last_day)
                .order_by(ReportedSend.last_day, *[getattr(ReportedSend, k) for k in KEY_COLUMNS])
            )
        )
