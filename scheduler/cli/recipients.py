"""`pingan recipients`: import lists, see what is loaded, record refusals, make sample data."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from scheduler.cli.common import (
    FORMAT_OPTION,
    OutputFormat,
    console,
    core,
    err_console,
    print_json,
    progress_bar,
    show_progress,
    table,
    usage_error,
)
from scheduler.exceptions import InputFileError
from scheduler.sample_data import DEFAULT_SEED

app = typer.Typer(
    help="Recipient lists: import, stats, opt-outs, sample data.", no_args_is_help=True
)


@app.command("import")
def import_file(
    ctx: typer.Context,
    file: Path = typer.Argument(
        ..., help="CSV: phone, town, village[, name, household, carrier, residence, segments]."
    ),
    encoding: str = typer.Option(
        None, "--encoding", help="utf-8, utf-8-sig, gb18030, gbk... (default: detected)."
    ),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Import (upsert by phone) a recipient list; bad rows go to <name>.rejects.csv with reasons."""
    from scheduler.services import recipients as services

    c = core(ctx)
    district = c.district
    show = fmt == OutputFormat.table and console.is_terminal
    size = file.stat().st_size if file.exists() else 0
    progress = Progress(
        TextColumn("importing"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not show,
    )
    with progress:
        task = progress.add_task("import", total=size)
        summary = services.import_recipients(
            c,
            file,
            encoding=encoding,
            on_progress=lambda n: progress.advance(task, n),
        )
    data = summary.to_dict()
    if fmt == OutputFormat.json:
        print_json(data)
        return
    console.print(
        f"{file}: {summary.rows} rows ({summary.encoding}) in {summary.seconds:.1f} s: "
        f"{summary.imported} imported, {summary.updated} updated, {summary.rejected} rejected",
        markup=False,
    )
    console.print(
        table(
            "Accepted by town",
            ["town", "name", "rows"],
            [
                [k, district.towns_by_id[k].name if k in district.towns_by_id else "", v]
                for k, v in data["by_town"].items()
            ],
        )
    )
    console.print(
        table(
            "Accepted by carrier",
            ["carrier", "rows"],
            [[k, v] for k, v in data["by_carrier"].items()],
        )
    )
    if summary.rejects_file:
        console.print(f"rejected rows, with line and reason: {summary.rejects_file}", markup=False)


@app.command("stats")
def stats(ctx: typer.Context, fmt: OutputFormat = FORMAT_OPTION) -> None:
    """Counts by town, village, carrier and segment."""
    from scheduler.services import recipients as services

    c = core(ctx)
    data = services.recipient_counts(c).to_dict()
    if fmt == OutputFormat.json:
        print_json(data)
        return
    console.print(f"{data['total']} recipients; {data['opted_out']} opted out")
    towns = {t.id: t.name for t in c.district.towns}
    console.print(
        table(
            "By town",
            ["town", "name", "recipients"],
            [[k, towns.get(k, ""), v] for k, v in data["by_town"].items()],
        )
    )
    villages = {f"{t.id}/{v.id}": v.name for t in c.district.towns for v in t.villages}
    console.print(
        table(
            "By village",
            ["village", "name", "recipients"],
            [[k, villages.get(k, ""), v] for k, v in data["by_village"].items()],
        )
    )
    for key, title in (
        ("by_carrier", "carrier"),
        ("by_segment", "segment"),
    ):
        console.print(
            table(f"By {title}", [title, "recipients"], [[k, v] for k, v in data[key].items()])
        )


@app.command("opt-out")
def opt_out(
    ctx: typer.Context,
    phones: list[str] = typer.Argument(None, help="Numbers that refused messages."),
    file: Path = typer.Option(
        None, "--file", help="A file with one number per line (or a CSV, first column)."
    ),
    source: str = typer.Option("cli", "--source", help="Where the refusal came from."),
    reason: str = typer.Option(None, "--reason", help="Free text, e.g. 电话投诉."),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Record residents who refused messages; they stay recorded whatever later imports say.

    Their queued and retrying messages are cancelled in the same transaction.

    Exits 1 when some numbers were invalid (the valid ones are recorded all the same).
    """
    from scheduler.phones import mask
    from scheduler.services import recipients as services

    raw: list[tuple[str, str]] = [("argument", p) for p in phones or []]
    if file is not None:
        raw.extend(_opt_out_file(file))
    if not raw:
        raise usage_error("give numbers or --file")
    result = services.opt_out(core(ctx), raw, source=source, reason=reason)
    valid = result.accepted
    bad = [f"{r.where}: {r.reason}" for r in result.rejected]
    if fmt == OutputFormat.json:
        print_json(
            {
                "recorded": result.recorded,
                "new": result.new,
                "cancelled": result.cancelled,
                "rejected": bad,
            }
        )
    else:
        console.print(
            f"{result.recorded} recorded ({result.new} new); "
            f"{result.cancelled} queued messages cancelled"
        )
        if valid and len(valid) <= 5:
            console.print("numbers: " + ", ".join(mask(p) for p in valid))
        for line in bad:
            console.print(f"rejected {line}", markup=False)
    if bad:
        raise typer.Exit(1)


def _opt_out_file(file: Path) -> Iterator[tuple[str, str]]:
    """(where, number) from a file: one number per line, or a CSV's first column."""
    from scheduler.recipients import detect_encoding

    try:
        with file.open("rb") as fh:
            encoding = detect_encoding(fh)
    except OSError as exc:
        raise InputFileError(f"{file}: cannot read: {exc.strerror}") from None
    with file.open(encoding=encoding, newline="") as fh:
        try:
            for i, row in enumerate(csv.reader(fh), start=1):
                cell = row[0].strip() if row else ""
                # Skip blank lines and a header (a first line without digits).
                if cell and not (i == 1 and not any(ch.isdigit() for ch in cell)):
                    yield f"{file}, line {i}", cell
        except UnicodeDecodeError as exc:
            raise InputFileError(f"{file}: cannot decode as {encoding}: {exc.reason}") from None


@app.command("generate")
def generate(
    ctx: typer.Context,
    count: int = typer.Option(
        None, "--count", min=0, help="Rows (default: 97% of each village's population)."
    ),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Same seed, same file."),
    out: Path = typer.Option(None, "--out", help="CSV to write (default: standard output)."),
) -> None:
    """Write a synthetic recipient CSV for the configured district (no real person's number)."""
    from scheduler.sample_data import default_count, write_csv

    district = core(ctx).district
    total = default_count(district) if count is None else count
    # A bar only when the CSV goes to a file: on standard output it would mix with the rows.
    with progress_bar("generating", show=out is not None and show_progress()) as on_progress:
        n = write_csv(district, out, count, seed, on_progress=lambda done: on_progress(done, total))
    if out is not None:
        err_console.print(f"wrote {n} synthetic recipients to {out}")
