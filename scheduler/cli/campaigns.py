"""`pingan campaigns` and `pingan occurrences`: what fires when, and what each firing did."""

from __future__ import annotations

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

app = typer.Typer(help="Campaigns: list, run one now, reload definitions.", no_args_is_help=True)
occurrences_app = typer.Typer(
    help="Occurrences (one firing of a campaign): history with counts; pause, resume, retry.",
    invoke_without_command=True,
)


@app.command("list")
def list_campaigns(ctx: typer.Context, fmt: OutputFormat = FORMAT_OPTION) -> None:
    """Each campaign with its window, next firing times and last occurrence."""
    from scheduler.services import campaigns as services

    rows = [camp.to_dict() for camp in services.list_campaigns(core(ctx))]
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
    from scheduler.services import campaigns as services

    c = core(ctx)
    c.campaigns.get(name)  # an unknown name fails before the bar appears
    when = services.parse_local_time(at, c.settings.tz) if at else None
    with progress_bar("expanding", show=show_progress(fmt)) as on_progress:
        advance = counting(on_progress, recipients_total(c, show_progress(fmt)))
        result = services.run_campaign(c, name, when, on_progress=advance)
    _print_result(result.to_dict(), fmt)
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
    from scheduler.services import campaigns as services

    c = core(ctx)
    console.print(f"{services.reload_campaigns(c)} campaigns valid")
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
    from scheduler.services import occurrences

    rows = [
        o.to_dict() for o in occurrences.list_occurrences(core(ctx), campaign=campaign, limit=limit)
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
    from scheduler.services import occurrences

    c = core(ctx)
    if paused:
        occurrences.pause_occurrence(c, occurrence_id)
    else:
        occurrences.resume_occurrence(c, occurrence_id)
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
    from scheduler.services import occurrences

    result = occurrences.retry_occurrence(core(ctx), occurrence_id)
    _print_result(result.to_dict(), fmt)
    if result.failed:
        raise typer.Exit(1)
