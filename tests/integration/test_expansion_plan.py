"""PostgreSQL plans the chunk `INSERT … SELECT` from statistics: expansion refreshes missing
or stale ones first, so a freshly loaded recipients table is not planned as a few dozen rows
(an index scan of each place's residents per chunk, growing with the table)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import text

from scheduler.core import Core
from scheduler.models import OccurrenceState
from scheduler.store.outbox import refresh_planner_stats
from tests.factories import add_recipients

MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))


def _row_estimate(core: Core) -> float | None:
    if core.engine.dialect.name != "postgresql":
        return None
    with core.engine.connect() as conn:
        return float(
            conn.execute(
                text("SELECT reltuples FROM pg_class WHERE oid = 'recipients'::regclass")
            ).scalar_one()
        )


def test_stale_statistics_are_refreshed_once(core: Core) -> None:
    add_recipients(core.engine, core.district, 3000)
    pg = core.engine.dialect.name == "postgresql"
    assert refresh_planner_stats(core.engine) is pg
    if pg:
        assert _row_estimate(core) == 3000
    # Fresh statistics are left alone (and SQLite has nothing to refresh).
    assert refresh_planner_stats(core.engine) is False


def test_expansion_of_a_fresh_table_plans_from_real_counts(core: Core) -> None:
    add_recipients(core.engine, core.district, 1200)
    planner = core.planner(chunk_size=500)
    result = planner.fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    assert result.state == OccurrenceState.READY
    assert result.queued == 1200
    estimate = _row_estimate(core)
    assert estimate is None or estimate == 1200
