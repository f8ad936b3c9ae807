"""The schema is tested: `upgrade head` must match the models exactly, on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from scheduler.db import current_revision, head_revision
from scheduler.migrations_filter import include_object
from scheduler.models import Base


def test_upgrade_head_matches_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include_object}
        )
        assert compare_metadata(ctx, Base.metadata) == []
