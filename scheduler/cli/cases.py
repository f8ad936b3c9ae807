"""`pingan cases`: fraud cases from the police, which can trigger local alerts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from scheduler.cli.common import FORMAT_OPTION, OutputFormat, console, core, print_json

app = typer.Typer(help="Fraud cases: import, and the alerts they trigger.", no_args_is_help=True)


@app.command("import")
def import_file(
    ctx: typer.Context,
    file: Path = typer.Argument(
        ..., help="CSV: case_id, time, amount, fraud_type, place, town, village."
    ),
    clock: str = typer.Option(
        None,
        "--clock",
        help="Pretend it is this local time (ISO), to rehearse on a scratch database: alerts "
        "are scheduled from it, e.g. 2023-01-02T09:00.",
    ),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Import cases; a village crossing a must-reach rule gets an alert at the next allowed time."""
    from scheduler.services.cases import import_cases

    c = core(ctx)
    fixed: dt.datetime | None = None
    if clock:
        try:
            at = dt.datetime.fromisoformat(clock)
        except ValueError:
            raise typer.BadParameter(f"--clock {clock!r} is not an ISO date-time") from None
        fixed = at.replace(tzinfo=c.settings.tz) if at.tzinfo is None else at
    result = import_cases(c, file, at=fixed)
    data = {
        "read": result.read,
        "inserted": result.inserted,
        "unchanged": result.unchanged,
        "rejected": result.rejected,
        "alerts": result.alerts,
    }
    if fmt == OutputFormat.json:
        print_json(data)
    else:
        console.print(
            f"{result.read} read, {result.inserted} new, {result.unchanged} already known, "
            f"{len(result.rejected)} rejected"
        )
        for r in result.rejected:
            console.print(f"  {file}, line {r['line']}: {r['reason']}")
        for a in result.alerts:
            console.print(
                f"  alert for {a['town']}/{a['village']} ({a['rule']}) at {a['at']}: "
                f"{a['queued']} queued"
            )
    if result.rejected:
        raise typer.Exit(1)
