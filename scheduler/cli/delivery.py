"""`pingan dispatch` and `pingan delivery`: sending the outbox, and what became of it."""

from __future__ import annotations

import typer

from scheduler.cli.common import FORMAT_OPTION, OutputFormat, console, core, print_json, table
from scheduler.delivery_stats import STATES, delivery_stats
from scheduler.dispatcher import Dispatcher
from scheduler.providers import make_provider

app = typer.Typer(help="Delivery: statistics by town, carrier, day or error.", no_args_is_help=True)


def dispatch(
    ctx: typer.Context,
    until_empty: bool = typer.Option(
        False, "--until-empty", help="Stop when nothing is due instead of waiting for more."
    ),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Send queued messages through the configured provider (inside the allowed hours)."""
    c = core(ctx)
    provider = make_provider(c.settings)
    dispatcher = Dispatcher(c.engine, provider, c.settings, clock=c.clock, stop=c.stop)
    try:
        stats = dispatcher.run(until_empty=until_empty)
    finally:
        dispatcher.close()
    data = {
        "claimed": stats.claimed,
        "sent": stats.sent,
        "retried": stats.retried,
        "failed": stats.failed,
        "unknown": stats.unknown,
        "opted_out": stats.opted_out,
        "outcomes": stats.by_outcome,
    }
    if fmt == OutputFormat.json:
        print_json(data)
    else:
        console.print(
            f"sent {stats.sent}, failed {stats.failed}, retry later {stats.retried}, "
            f"unknown {stats.unknown}"
        )


@app.command("stats")
def stats(
    ctx: typer.Context,
    month: str = typer.Option(
        None,
        "--month",
        help="YYYY-MM: messages sent that local month (pending: by month queued).",
    ),
    by: str = typer.Option(None, "--by", help="town, carrier, day or error."),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Queued, sending, sent, delivered, undelivered, failed, unknown; rate; top error codes."""
    if by not in (None, "town", "carrier", "day", "error"):
        raise typer.BadParameter("--by must be town, carrier, day or error")
    data = delivery_stats(core(ctx), month=month, by=by)
    if fmt == OutputFormat.json:
        print_json(data)
        return
    console.print(
        table(
            f"Delivery{' ' + month if month else ''} by {data['by']}",
            [data["by"], *STATES, "rate"],
            [
                [
                    r["key"],
                    *[r[s] for s in STATES],
                    f"{r['delivery_rate']:.1%}" if r["delivery_rate"] is not None else "-",
                ]
                for r in data["rows"]
            ],
        )
    )
    if data["top_errors"]:
        console.print(
            table(
                "Top error codes",
                ["code", "count", "meaning"],
                [[e["code"], e["count"], e["meaning"]] for e in data["top_errors"]],
            )
        )
