"""`pingan db`: the schema, and pruning old months (`pingan db prune`)."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.cli.common import (
    FORMAT_OPTION,
    OutputFormat,
    console,
    core,
    print_json,
    progress_bar,
    show_progress,
    table,
)

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


@app.command("prune")
def db_prune(
    ctx: typer.Context,
    before: str = typer.Option(
        ...,
        "--before",
        metavar="YYYY-MM",
        help="Prune every month earlier than this one (at most the current month).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would be archived and dropped; change nothing."
    ),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Archive old months of messages and attempts, then drop them.

    Each month before --before goes to <data dir>/archive/ as gzip'd CSV (mode 0600).

    Every column is kept as stored, phone numbers included: the office's record.

    The archive is synced before the month's partitions are dropped or rows deleted.

    One month per transaction: run again after an interruption; done months are skipped.

    Quota and report figures come from the send counters, which stay.
    """
    from scheduler.services.retention import prune

    c = core(ctx)
    with progress_bar("pruning months", show=show_progress(fmt)) as on_progress:
        result = prune(c, before, dry_run=dry_run, on_progress=on_progress)
    if fmt == OutputFormat.json:
        print_json(result.to_dict())
        return
    rows = [
        [m.month, m.messages, m.attempts, m.action, ", ".join(Path(a).name for a in m.archives)]
        for m in result.months
    ]
    verb = "would prune" if dry_run else "pruned"
    title = f"months before {result.before} ({verb}; archive: {result.archive_dir})"
    if not rows:
        console.print(f"nothing to prune before {result.before}")
        return
    console.print(table(title, ["month", "messages", "attempts", "action", "archive"], rows))
