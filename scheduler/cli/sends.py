"""`pingan sends`: counts carriers and towns report for their own sends."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.cli.common import FORMAT_OPTION, OutputFormat, console, core, print_json, table

app = typer.Typer(
    help="Reported sends: what carriers and towns sent through their own channels.",
    no_args_is_help=True,
)


@app.command("import")
def import_file(
    ctx: typer.Context,
    file: Path = typer.Argument(
        ...,
        help="CSV: source, subject, village (optional), period (2022-10-12 or 2022-W41), "
        "messages_sent, people_reached (optional), note. Chinese headers: 报送单位, 对象, "
        "村社, 日期或周, 发送条数, 覆盖人数, 备注.",
    ),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Record reported sends; the same source, subject and period again updates its row.
    Bad rows are listed with their line and reason (exit 1); the good ones are kept."""
    from scheduler.services.sends import import_sends

    result = import_sends(core(ctx), file)
    if fmt == OutputFormat.json:
        print_json(result.to_dict())
    else:
        console.print(
            f"{result.read} read, {result.inserted} new, {result.updated} updated, "
            f"{len(result.rejected)} rejected"
        )
        for r in result.rejected:
            console.print(
                f"  {file}, line {r['line']}: {r['reason']}", markup=False, soft_wrap=True
            )
    if result.rejected:
        raise typer.Exit(1)


@app.command("list")
def list_(
    ctx: typer.Context,
    month: str = typer.Option(..., "--month", help="YYYY-MM: reports whose last day is in it."),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """The reported sends counted in a month."""
    from scheduler.periods import InvalidMonth, Month
    from scheduler.services.sends import list_sends

    try:
        listed = list_sends(core(ctx), Month.parse(month))
    except InvalidMonth as exc:
        raise typer.BadParameter(str(exc)) from None
    rows = [r.to_dict() for r in listed]
    if fmt == OutputFormat.json:
        print_json(rows)
        return
    console.print(
        table(
            f"Reported sends {month}",
            ["source", "subject", "period", "messages_sent", "people_reached", "note"],
            [
                [
                    r.source_label,
                    r.subject,
                    r.period,
                    r.messages_sent,
                    r.people_reached,
                    r.note,
                ]
                for r in listed
            ],
        )
    )
