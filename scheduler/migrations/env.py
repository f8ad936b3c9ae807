"""Alembic environment: the engine comes from the caller or pingan's settings, never a URL here."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from scheduler.migrations_filter import include_object
from scheduler.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from scheduler.db import make_engine
        from scheduler.settings import load_settings

        engine = make_engine(load_settings().effective_database_url)
    assert isinstance(engine, Engine)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            include_object=include_object,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
