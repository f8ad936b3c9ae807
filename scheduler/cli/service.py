"""`pingan run`: the long-running service."""

from __future__ import annotations

import datetime as dt
import sys
import time

import typer

from scheduler.cli.common import core, refuse_unless_ready
from scheduler.exceptions import PingAnError


def run(
    ctx: typer.Context,
    no_http: bool = typer.Option(False, "--no-http", help="Do not serve HTTP."),
    no_dispatch: bool = typer.Option(False, "--no-dispatch", help="Fire campaigns, send nothing."),
    standby_poll: float = typer.Option(5.0, help="Seconds between lock attempts as a standby."),
    once: bool = typer.Option(
        False, "--once", help="Fire what is due (catch-up included), send until empty, exit."
    ),
    clock: str = typer.Option(
        None,
        "--clock",
        help="With --once: pretend the service starts at this local time (ISO), to rehearse "
        "a plan on a scratch database, e.g. 2022-10-10T09:30.",
    ),
) -> None:
    """Run the scheduler service: fire campaigns, drain the outbox, serve webhooks.

    A second `pingan run` on the same database waits as a standby. SIGTERM or Ctrl-C stops
    cleanly (exit 0); SIGHUP reloads the campaign definitions. A campaign that cannot be
    expanded fails alone; with --once everything else is sent, then the failed occurrences
    are named on stderr and the exit code is 1 (`pingan occurrences retry ID` after the fix).
    """
    from scheduler.service import Service

    c = core(ctx)
    refuse_unless_ready(c)
    if clock:
        if not once:
            raise PingAnError("--clock needs --once: the live scheduler runs on the real clock")
        try:
            start = dt.datetime.fromisoformat(clock)
        except ValueError:
            raise PingAnError(f"--clock {clock!r} is not an ISO date-time") from None
        start = start.replace(tzinfo=c.settings.tz) if start.tzinfo is None else start
        real_start = time.monotonic()
        c.clock = lambda: start + dt.timedelta(seconds=time.monotonic() - real_start)
    service = Service(
        c,
        standby_poll=standby_poll,
        with_dispatch=not no_dispatch,
        with_http=not no_http and not once,
        once=once,
    )
    service.install_signal_handlers()
    code = service.run()
    failed = service.failed if once else []
    for r in failed:
        sys.stderr.write(f"failed: occurrence {r.occurrence_id} ({r.campaign}): {r.error}\n")
    if failed:
        sys.stderr.write(
            f"{len(failed)} occurrence(s) failed; fix the cause, then "
            "`pingan occurrences retry ID`\n"
        )
    raise typer.Exit(code)
