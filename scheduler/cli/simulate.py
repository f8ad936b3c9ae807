"""`pingan simulate`: check a plan against the quotas before anything is sent."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

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
    table_console,
    usage_error,
)


def _day(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD)", param_hint=f"'{name}'"
        ) from None


def simulate_command(
    ctx: typer.Context,
    start: str = typer.Option(..., "--from", help="First day, e.g. 2022-10-01."),
    end: str = typer.Option(..., "--to", help="Last day, e.g. 2022-12-31."),
    seed: int = typer.Option(1, "--seed", help="Seed of the simulated delivery outcomes."),
    recipients: Path = typer.Option(
        Path("recipients/sample.csv"), "--recipients", help="Recipient list to simulate with."
    ),
    scratch: Path = typer.Option(
        None,
        "--scratch",
        help="Folder for the scratch database and the monthly reports written on their due "
        "days (default: a new temp folder, removed afterwards).",
    ),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Run the configured campaigns over a simulated clock on a scratch database (dry-run
    provider, same scheduler, expansion, dispatch and quota code as the service) and print the
    attainment of every quota window in the period. Exits 1 if any quota would be missed."""
    from scheduler.simulation import simulate

    c = core(ctx)
    first, last = _day(start, "--from"), _day(end, "--to")
    if last < first:
        raise usage_error("--to is before --from")
    with progress_bar("simulating", show=show_progress(fmt)) as on_progress:
        result = simulate(
            c.settings,
            start_day=first,
            end_day=last,
            recipients_file=recipients,
            seed=seed,
            scratch=scratch,
            on_progress=on_progress,
        )
    rules: list[dict[str, Any]] = []
    for st in result.statuses:
        rows = list(st.rows)
        met = sum(1 for r in rows if str(r.status) == "met")
        # Rules met only by sends carriers report for their own channels (seed 001) have
        # nothing to count in a rehearsal of the office's plan: shown, never judged.
        simulated = st.rule.counted_sources != "reported"
        rules.append(
            {
                "rule": st.rule.id,
                "simulated": simulated,
                "window": st.window.label,
                "measure": st.rule.measure,
                "subjects": len(rows),
                "met": met,
                "lowest_attainment_pct": float(min((r.attainment for r in rows), default=0)),
                "unmet": [
                    {
                        "subject": r.subject.key,
                        "name": r.subject.name,
                        "target": r.target,
                        "actual": r.actual,
                        "shortfall": r.shortfall,
                        "attainment_pct": float(r.attainment),
                    }
                    for r in rows
                    if simulated and str(r.status) != "met"
                ],
            }
        )
    all_met = all(not r["unmet"] for r in rules)
    # The monthly reports the service's report job wrote on their due days (kept only in a
    # --scratch folder).
    reports = [{"day": day.isoformat(), "path": path} for day, path in result.reports if scratch]
    data = {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "seed": seed,
        "recipients": result.recipients,
        "occurrences_fired": len(result.timeline.fired),
        "top_ups": len(result.topups),
        "messages": result.messages,
        "elapsed_seconds": round(result.elapsed_seconds, 1),
        "all_met": all_met,
        "rules": rules,
        "reports": reports,
    }
    if fmt == OutputFormat.json:
        print_json(data)
    else:
        console.print(
            f"simulated {first}..{last}: {result.recipients} recipients, "
            f"{len(result.timeline.fired)} occurrences, {len(result.topups)} top-ups, "
            f"messages {result.messages}, {data['elapsed_seconds']} s"
        )
        table_console().print(
            table(
                "Quota attainment (simulated)",
                ["rule", "window", "measure", "met", "lowest %", "short"],
                [
                    [
                        r["rule"],
                        r["window"],
                        r["measure"],
                        f"{r['met']}/{r['subjects']}" if r["simulated"] else "-",
                        f"{r['lowest_attainment_pct']:.1f}" if r["simulated"] else "-",
                        "; ".join(
                            f"{u['name']} short {u['shortfall']} ({u['attainment_pct']:.1f}%)"
                            for u in r["unmet"]
                        )
                        or ("-" if r["simulated"] else "counts carriers' reported sends"),
                    ]
                    for r in rules
                ],
            )
        )
        console.print("every quota met" if all_met else "[bold red]some quotas would be missed[/]")
        for report in reports:
            console.print(f"monthly report written {report['day']}: {report['path']}")
    if not all_met:
        raise typer.Exit(1)
