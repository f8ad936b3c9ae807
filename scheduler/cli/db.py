"""`pingan db`: the schema."""

from __future__ import annotations

import typer

from scheduler.cli.common import console, core

app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = typer.Argument("head")) -> None:
    """Bring the database to the current schema (or REVISION)."""
    from scheduler.db import current_revision, upgrade

    engine = core(ctx).new_engine()
    upgrade(engine, revision)
    console.print(f"database at revision {current_revision(engine)}")
    engine.dispose()


@app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Show the database's revision and the newest one this version knows."""
    from scheduler.db import current_revision, head_revision

    engine = core(ctx).new_engine()
    console.print(f"current: {current_revision(engine)}  head: {head_revision(engine)}")
    engine.dispose()
