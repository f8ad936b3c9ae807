"""`pingan campaigns` and `pingan occurrences`: what fires when, and what each firing did."""

from __future__ import annotations

import datetime as dt
import os
import signal
from typing import Any

import typer

from scheduler.cli.common import (
    FORMAT_OPTION,
    OutputFormat,
    console,
    core,
    counting,
    err_console,
    print_json,
    progress_bar,
    recipients_total,
    show_progress,
    table,
)
from scheduler.exceptions import PingAnError
from scheduler.expansion import ExpansionResult
from scheduler.models import Occurrence, OccurrenceState
from scheduler.store import outbox

app = typer.Typer(help="Campaigns: list, run one now, reload definitions.", no_args_is_help=True)
occurrences_app = typer.Typer(
    help="Occurrences (one firing of a campaign): history with counts; pause, resume, retry.",
    invoke_without_command=True,
)


def _result_dict(result: ExpansionResult) -> dict[str, Any]:
    return {
        "occurrence_id": result.occurrence_id,
        "campaign": result.campaign,
        "state": str(result.state),
        "queued": result.queued,
        "excluded": result.excluded,
        "error": result.error,
    }


def _local(t: dt.datetime | None, tz: Any) -> str | None:
    return t.astimezone(tz).strftime("%Y-%m-%d %H:%M") if t else None


def occurrence_dict(o: Occurrence, tz: Any) -> dict[str, Any]:
    return {
        "id": o.id,
        "campaign": o.campaign,
        "scheduled_at": _local(o.scheduled_at, tz),
        "kind": o.kind,
        "channel": o.channel,
        "state": str(o.state),
        "paused": o.paused,
        "queued": o.queued,
        "excluded": dict(o.excluded or {}),
        "error": o.error,
    }


@app.command("list")
def list_campaigns(ctx: typer.Context, fmt: OutputFormat = FORMAT_OPTION) -> None:
    """Each campaign with its window, next firing times and last occurrence."""
    c = core(ctx)
    tz = c.settings.tz
    planner = c.planner()
    last = outbox.last_occurrences(c.engine)
    rows: list[dict[str, Any]] = []
    for camp in c.campaigns.all:
        nxt = planner.next_fire_times(camp, c.clock())
        lo = last.get(camp.name)
        rows.append(
            {
                "name": camp.name,
                "channel": camp.channel,
                "schedule": camp.schedule.cron
                or (camp.schedule.at.isoformat(" ") if camp.schedule.at else None)
                or f"on {camp.schedule.event}",
                "active": f"{camp.active.start}..{camp.active.end}",
                "content": camp.template or camp.pool or ",".join(camp.template_names()),
                "next": [_local(t, tz) for t in nxt],
                "last": occurrence_dict(lo, tz) if lo else None,
            }
        )
    if fmt == OutputFormat.json:
        print_json(rows)
        return
    console.print(
        table(
            "Campaigns",
            ["name", "channel", "schedule", "active", "content", "next firings", "last"],
            [
                [
                    r["name"],
                    r["channel"],
                    r["schedule"],
                    r["active"],
                    r["content"],
                    "\n".join(r["next"]) or "-",
                    (
                        f"{r['last']['scheduled_at']} {r['last']['state']} "
                        f"queued {r['last']['queued']}"
                    )
                    if r["last"]
                    else "-",
                ]
                for r in rows
            ],
        )
    )


@app.command("run")
def run_campaign(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Campaign name."),
    at: str = typer.Option(
        None, "--at", help="Scheduled time (local, ISO, e.g. 2022-10-10T09:00); default now."
    ),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Expand one occurrence now, as the scheduler would; running it again changes nothing."""
    c = core(ctx)
    tz = c.settings.tz
    campaign = c.campaigns.get(name)
    if at:
        try:
            when = dt.datetime.fromisoformat(at)
        except ValueError:
            raise PingAnError(f"--at {at!r} is not an ISO date-time") from None
        when = when.replace(tzinfo=tz) if when.tzinfo is None else when
    else:
        when = c.clock().replace(microsecond=0)
    from scheduler.firings import FiringKind
    from scheduler.planner import Firing

    planner = c.planner()
    with progress_bar("expanding", show=show_progress(fmt)) as on_progress:
        planner.expander.on_progress = counting(
            on_progress, recipients_total(c, show_progress(fmt))
        )
        result = planner.fire(
            Firing.scheduled(campaign, when.astimezone(dt.UTC), FiringKind.MANUAL)
        )
    data = _result_dict(result)
    _print_result(data, fmt)
    if result.error:
        raise typer.Exit(1)


def _print_result(data: dict[str, Any], fmt: OutputFormat) -> None:
    if fmt == OutputFormat.json:
        print_json(data)
        return
    console.print(
        f"occurrence {data['occurrence_id']}: {data['state']}, queued {data['queued']}, "
        f"excluded {data['excluded']}",
        markup=False,
        highlight=False,
    )
    if data["error"]:
        err_console.print(f"error: {data['error']}", markup=False, highlight=False)
        if data["state"] == "failed":
            err_console.print(
                f"fix the cause, then `pingan occurrences retry {data['occurrence_id']}`",
                markup=False,
                highlight=False,
            )


@app.command("reload")
def reload_campaigns(ctx: typer.Context) -> None:
    """Validate the campaign definitions; a `pingan run` on this machine rebuilds its jobs."""
    c = core(ctx)
    c.reload()
    console.print(f"{len(c.campaigns.all)} campaigns valid")
    pidfile = c.settings.data_dir / "pingan-run.pid"
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGHUP)
        console.print(f"signalled the running service (pid {pid}) to reload")
    except (OSError, ValueError):
        console.print("no running service on this machine; it will read them at start")


@occurrences_app.callback()
def list_occurrences(
    ctx: typer.Context,
    campaign: str = typer.Option(None, "--campaign", "-c", help="Only this campaign."),
    limit: int = typer.Option(50, help="Newest first, at most this many."),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """History of occurrences with their counts per exclusion reason."""
    if ctx.invoked_subcommand:
        return
    c = core(ctx)
    tz = c.settings.tz
    rows = [
        occurrence_dict(o, tz)
        for o in outbox.list_occurrences(c.engine, campaign=campaign, limit=limit)
    ]
    if fmt == OutputFormat.json:
        print_json(rows)
        return
    with_errors = any(r["error"] for r in rows)
    console.print(
        table(
            "Occurrences",
            ["id", "campaign", "scheduled", "kind", "state", "queued", "excluded"]
            + (["error"] if with_errors else []),
            [
                [
                    r["id"],
                    r["campaign"],
                    r["scheduled_at"],
                    r["kind"],
                    r["state"] + (" (paused)" if r["paused"] else ""),
                    r["queued"],
                    ", ".join(f"{k} {v}" for k, v in sorted(r["excluded"].items())),
                ]
                + ([r["error"] or ""] if with_errors else [])
                for r in rows
            ],
        )
    )


def _set_paused(ctx: typer.Context, occurrence_id: int, paused: bool) -> None:
    c = core(ctx)
    if not outbox.set_paused(c.engine, occurrence_id, paused):
        raise PingAnError(f"no occurrence {occurrence_id}")
    console.print(f"occurrence {occurrence_id} {'paused' if paused else 'resumed'}")


@occurrences_app.command("pause")
def pause(ctx: typer.Context, occurrence_id: int) -> None:
    """Stop sending an occurrence's queued messages until resumed."""
    _set_paused(ctx, occurrence_id, True)


@occurrences_app.command("resume")
def resume(ctx: typer.Context, occurrence_id: int) -> None:
    """Restart sending a paused occurrence."""
    _set_paused(ctx, occurrence_id, False)


@occurrences_app.command("retry")
def retry(
    ctx: typer.Context,
    occurrence_id: int = typer.Argument(..., help="Id of a failed occurrence."),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Run a failed occurrence again at its original scheduled time, once the cause is fixed.

    It resumes where it stopped: nobody already queued is queued again. Exits 1 if the
    occurrence is not failed, or fails again (with the reason).
    """
    c = core(ctx)
    result = c.planner().retry(occurrence_id)
    _print_result(_result_dict(result), fmt)
    if result.state == OccurrenceState.FAILED or result.error:
        raise typer.Exit(1)
