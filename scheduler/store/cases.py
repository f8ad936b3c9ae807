"""Fraud cases reported by the police, and the alerts they trigger."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from scheduler.db import transaction
from scheduler.models import FraudCase, Occurrence


def insert_cases(engine: Engine, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Insert cases not seen before; the ids actually inserted (a re-import changes nothing)."""
    if not rows:
        return []
    with transaction(engine) as s:
        ids = [r["case_id"] for r in rows]
        known = set(s.scalars(select(FraudCase.case_id).where(FraudCase.case_id.in_(ids))))
        fresh = [r for r in rows if r["case_id"] not in known]
        if fresh:
            mod = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
            s.execute(
                mod.insert(FraudCase).on_conflict_do_nothing(index_elements=["case_id"]), fresh
            )
    return [r["case_id"] for r in fresh]


def village_case_stats(
    engine: Engine,
    town_id: str,
    village_id: str,
    since: dt.datetime,
    until: dt.datetime | None = None,
) -> tuple[int, Decimal]:
    """(cases in [since, until], largest single loss) in one village."""
    stmt = select(func.count(), func.coalesce(func.max(FraudCase.amount_yuan), 0)).where(
        FraudCase.town_id == town_id,
        FraudCase.village_id == village_id,
        FraudCase.occurred_at >= since,
    )
    if until is not None:
        stmt = stmt.where(FraudCase.occurred_at <= until)
    with engine.connect() as conn:
        n, biggest = conn.execute(stmt).one()
    return int(n), Decimal(str(biggest))


def get_case(engine: Engine, case_id: str) -> FraudCase:
    with Session(engine) as s:
        case = s.get(FraudCase, case_id)
        if case is None:
            raise KeyError(case_id)
        return case


def last_alert(engine: Engine, key: str) -> dt.datetime | None:
    with engine.connect() as conn:
        value = conn.execute(
            select(func.max(Occurrence.scheduled_at)).where(Occurrence.campaign == key)
        ).scalar()
    if value is None:
        return None
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def latest_case(
    engine: Engine,
    town_id: str,
    village_id: str,
    since: dt.datetime,
    until: dt.datetime | None = None,
) -> FraudCase | None:
    stmt = select(FraudCase).where(
        FraudCase.town_id == town_id,
        FraudCase.village_id == village_id,
        FraudCase.occurred_at >= since,
    )
    if until is not None:
        stmt = stmt.where(FraudCase.occurred_at <= until)
    with Session(engine) as s:
        return s.scalars(stmt.order_by(FraudCase.occurred_at.desc()).limit(1)).one_or_none()


def cases_between(engine: Engine, start: dt.datetime, end: dt.datetime) -> list[FraudCase]:
    with Session(engine) as s:
        return list(
            s.scalars(
                select(FraudCase)
                .where(FraudCase.occurred_at >= start, FraudCase.occurred_at < end)
                .order_by(FraudCase.occurred_at)
            )
        )
