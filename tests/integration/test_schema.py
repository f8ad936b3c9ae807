"""The schema is tested: `upgrade head` must match the models exactly, on every backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from scheduler.db import current_revision, head_revision, make_engine
from scheduler.migrations_filter import include_object
from scheduler.models import Base


def test_upgrade_head_matches_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include_object}
        )
        assert compare_metadata(ctx, Base.metadata) == []


@pytest.mark.parametrize(("setting", "pragma"), [("off", 0), ("normal", 1), ("full", 2)])
def test_sqlite_synchronous_setting_reaches_every_connection(
    tmp_path: Path, setting: str, pragma: int
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", sqlite_synchronous=setting)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == pragma
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_partitioned_tables_have_what_the_comparison_skips(engine: Engine) -> None:
    """The comparison above skips partitions and primary keys (scheduler/migrations_filter.py);
    checked here instead: on PostgreSQL messages and attempts are range-partitioned by month
    with the key in the primary key and in the exactly-once unique key; SQLite keeps `id`."""
    from sqlalchemy import inspect

    from scheduler.store.retention import is_partitioned

    insp = inspect(engine)
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("messages")}
    assert ("occurrence_id", "recipient_id", "period") in uniques
    pg = engine.dialect.name == "postgresql"
    keys = {
        "messages": ["id", "period"] if pg else ["id"],
        "attempts": ["id", "attempted_at"] if pg else ["id"],
    }
    with engine.connect() as conn:
        for table, pk in keys.items():
            assert is_partitioned(conn, table) is pg
            assert insp.get_pk_constraint(table)["constrained_columns"] == pk
            if pg:
                default = conn.exec_driver_sql(f"SELECT to_regclass('{table}_default')").scalar()
                assert default is not None
