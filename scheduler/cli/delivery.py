"""`pingan dispatch` and `pingan delivery`: sending the outbox, and what became of it."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
)

if TYPE_CHECKING:
    from scheduler.core import Core
    from scheduler.dispatcher import DispatchStats

app = typer.Typer(help="Delivery: statistics by town, carrier, day or error.", no_args_is_help=True)


def dispatch(
    ctx: typer.Context,
    until_empty: bool = typer.Option(
        False,
        "--until-empty",
        help="Stop when nothing is due instead of waiting for more; exit 1 if anything is "
        "left queued, retrying or sending.",
    ),
    max_wait: float = typer.Option(
        300.0,
        "--max-wait",
        min=0,
        help="With --until-empty: seconds to wait for retries coming due before giving up.",
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        min=1,
        help="Dispatcher processes sharing the outbox and the rate limits (default: "
        "PINGAN_DISPATCH__WORKERS, 1). More than one needs PostgreSQL.",
    ),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Send queued messages through the configured provider (inside the allowed hours).

    Ctrl-C or SIGTERM stops cleanly: batches in flight go back to the queue unsent."""
    from scheduler.dispatcher import build_dispatcher
    from scheduler.services.delivery import messages_left
    from scheduler.workers import check_workers, run_workers

    c = core(ctx)
    n = workers or c.settings.dispatch.workers
    check_workers(c.settings, n)
    show_bar = console.is_terminal and fmt != OutputFormat.json
    _stop_on_signals(c)
    problems: list[str] = []
    by_worker: list[int] = []
    if n == 1:
        dispatcher = build_dispatcher(c)
        try:
            with _progress(c, show_bar) as on_batch:
                stats = dispatcher.run(
                    until_empty=until_empty, max_wait=max_wait, progress=on_batch
                )
        finally:
            dispatcher.close()
    else:
        with _progress(c, show_bar) as on_batch:
            result = run_workers(
                c.settings,
                n,
                stop=c.stop,
                until_empty=until_empty,
                max_wait=max_wait,
                progress=on_batch,
            )
        stats, problems, by_worker = result.stats, result.problems, result.sent_by_worker
    left = {k: v for k, v in messages_left(c).items() if v} if until_empty else {}
    data = {
        "claimed": stats.claimed,
        "sent": stats.sent,
        "retried": stats.retried,
        "failed": stats.failed,
        "unknown": stats.unknown,
        "opted_out": stats.opted_out,
        "cancelled": stats.cancelled,
        "deferred": stats.deferred,
        "outcomes": stats.by_outcome,
        "left": left,
    }
    if by_worker:
        data["sent_by_worker"] = by_worker
    if fmt == OutputFormat.json:
        print_json(data)
    else:
        console.print(
            f"sent {stats.sent}, failed {stats.failed}, retry later {stats.retried}, "
            f"unknown {stats.unknown}, cancelled (opted out) {stats.cancelled}, "
            f"outside hours {stats.deferred}",
            soft_wrap=True,
        )
    for problem in problems:
        err_console.print(f"error: {problem}", markup=False)
    if left:
        for state, count in left.items():
            err_console.print(f"left {state}: {count}", markup=False)
    if left or problems:
        raise typer.Exit(1)


def _stop_on_signals(c: Core) -> None:
    """SIGINT and SIGTERM set the core's stop: the dispatcher (or each worker, which gets the
    signal passed on) finishes its sends in flight and puts the rest back."""

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        c.stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


@contextmanager
def _progress(c: Core, show: bool) -> Iterator[Callable[[DispatchStats], None] | None]:
    """A progress bar (sent and failed counts, rate) on a terminal; nothing when piped."""
    from scheduler.services.delivery import messages_left

    if not show:
        yield None
        return
    total = sum(v for k, v in messages_left(c).items() if k != "sending")
    columns = (
        TextColumn("[bold]发送 dispatch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sent {task.fields[sent]} · failed {task.fields[failed]}"),
        TextColumn("{task.fields[rate]:.0f}/s"),
        TimeElapsedColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("dispatch", total=total or None, sent=0, failed=0, rate=0.0)

        def update(stats: DispatchStats) -> None:
            done = stats.sent + stats.failed + stats.unknown + stats.cancelled
            rate = stats.sent / max(time.monotonic() - started, 1e-6)
            bar.update(task, completed=done, sent=stats.sent, failed=stats.failed, rate=rate)

        yield update


@app.command("pull")
def pull(
    ctx: typer.Context,
    older_than: float = typer.Option(
        0.0,
        "--older-than",
        min=0,
        help="Only messages sent at least this many seconds ago.",
    ),
    limit: int = typer.Option(
        10_000, "--limit", min=1, help="At most this many messages looked up in this run."
    ),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Pull delivery receipts from the provider for messages still `sent` (no receipt pushed):
    for an intranet the gateway's pushes cannot reach, from cron. The service does this by
    itself every PINGAN_DISPATCH__RECEIPT_PULL_MINUTES."""
    from scheduler.services.delivery import pull_receipts

    c = core(ctx)
    with progress_bar("pulling receipts", show=show_progress(fmt)) as on_progress:
        result = pull_receipts(
            c, older_than_seconds=older_than, limit=limit, on_progress=on_progress
        )
    data = result.to_dict()
    if fmt == OutputFormat.json:
        print_json(data)
        return
    console.print(
        f"looked up {data['looked_up']}: {data['applied']} settled, "
        f"{data['not_final']} not final yet, {data['errors']} not answered"
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
    """Queued, sending, sent, delivered, undelivered, failed, unknown, cancelled; rate; top
    error codes and reasons (opted_out: cancelled because the resident refused)."""
    from scheduler.services.delivery import STATES, delivery_stats

    if by not in (None, "town", "carrier", "day", "error"):
        raise typer.BadParameter("--by must be town, carrier, day or error")
    c = core(ctx)
    data = delivery_stats(c, month=month, by=by).to_dict()
    if fmt == OutputFormat.json:
        print_json(data)
        return
    # Office staff know their towns by name; the id stays for scripts and the other commands.
    # Eleven columns do not fit 80: there the name gives way rather than fold the headers.
    wide = console.width >= 90
    names = {t.id: t.name for t in c.district.towns} if data["by"] == "town" and wide else {}
    console.print(
        table(
            f"Delivery{' ' + month if month else ''} by {data['by']}",
            [data["by"], *(["name"] if names else []), *STATES, "rate"],
            [
                [
                    r["key"],
                    *([names.get(r["key"], "")] if names else []),
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
