"""`pingan quota`: Quotas: targets and attainment."""

from __future__ import annotations

import csv
import datetime as dt
import enum
import sys
from typing import Any

import typer

from scheduler.cell_safety import neutralise_cell
from scheduler.cli.common import (
    console,
    core,
    print_json,
    table,
    table_console,
    usage_error,
)

app = typer.Typer(help="Quotas: targets and attainment.", no_args_is_help=True)


class QuotaFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class By(enum.StrEnum):
    town = "town"
    village = "village"
    carrier = "carrier"


FORMAT = typer.Option(QuotaFormat.table, "--format", "-f", help="table, json or csv.")
RULE = typer.Option(None, "--rule", "-r", help="A rule id from config/quotas.yaml.")

_STATUS_MARK = {"met": "met ✓", "on_track": "on track", "behind": "behind ✗"}


def _write_csv(header: list[str], rows: list[list[Any]]) -> None:
    """Cells that look like formulas are written as text (the export is opened in Excel)."""
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow([neutralise_cell(h) for h in header])
    w.writerows([neutralise_cell(v) for v in row] for row in rows)
    sys.stdout.flush()


@app.command("targets")
def targets_cmd(ctx: typer.Context, rule: str | None = RULE, fmt: QuotaFormat = FORMAT) -> None:
    """The target table of each rule (or one): base × share rounded half up, total row from
    the total base."""
    from scheduler.services.quotas import quota_targets

    tables = quota_targets(core(ctx), rule)
    if fmt is QuotaFormat.json:
        print_json([t.to_dict() for t in tables])
        return
    if fmt is QuotaFormat.csv:
        header = ["rule", "subject", "name", "base", *[col.label for col in tables[0].columns]]
        if len(tables) > 1:
            header = ["rule", "subject", "name", "base", "column", "share", "target"]
        rows: list[list[Any]] = []
        for t in tables:
            for r in (*t.rows, t.total):
                key = r.subject.key if r.subject else ""
                if len(tables) == 1:
                    rows.append([t.rule.id, key, r.name, r.base, *r.targets])
                else:
                    rows.extend(
                        [t.rule.id, key, r.name, r.base, col.label, str(col.share), v]
                        for col, v in zip(t.columns, r.targets, strict=True)
                    )
        _write_csv(header, rows)
        return
    if not tables:
        console.print("no quota rules configured")
    for t in tables:
        title = (
            f"{t.rule.id}: {t.rule.name}\n{t.rule.subject} · {t.rule.measure_label} · "
            f"{t.rule.start}..{t.rule.end}"
        )
        rows = [
            [r.subject.key if r.subject else "", r.name, r.base, *r.targets]
            for r in (*t.rows, t.total)
        ]
        table_console().print(
            table(title, ["subject", "name", t.rule.base, *[col.label for col in t.columns]], rows)
        )


def _parse_day(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"a date looks like 2022-10-12, got {value!r}", param_hint="'--on'"
        ) from None


@app.command("status")
def status_cmd(
    ctx: typer.Context,
    rule: str | None = RULE,
    week: str | None = typer.Option(None, "--week", help="An ISO week, e.g. 2022-W41."),
    month: str | None = typer.Option(None, "--month", help="A month, e.g. 2022-10."),
    on: str | None = typer.Option(
        None, "--on", help="The window of each rule containing this date (default: today)."
    ),
    by: By | None = typer.Option(None, "--by", help="Count by town, village or carrier."),
    bottom: int = typer.Option(
        0, "--bottom", min=0, help="Also mark the bottom N not yet met as laggards."
    ),
    fmt: QuotaFormat = FORMAT,
) -> None:
    """Attainment of each rule in its window: one row per subject, ranked, laggards marked."""
    from scheduler import quotas as q
    from scheduler.services.quotas import month_label, quota_status, week_label

    if sum(x is not None for x in (week, month, on)) > 1:
        raise usage_error("give at most one of --week, --month, --on")
    label: str | None = None
    try:
        if week:
            label = week_label(week)
        elif month:
            label = month_label(month)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--week'" if week else "'--month'") from None
    day = _parse_day(on) if on else None
    report = quota_status(core(ctx), rule, label, day, by=by.value if by else None, bottom=bottom)
    statuses = report.statuses
    results = [(st.rule, st.window, st.rows) for st in statuses]
    if fmt is QuotaFormat.json:
        print_json(report.rules_json())
        return
    if fmt is QuotaFormat.csv:
        _write_csv(
            [
                "rule",
                "window",
                "measure",
                "rank",
                "subject",
                "name",
                "base",
                "target",
                "own",
                "reported",
                "actual",
                "attainment_pct",
                "shortfall",
                "expected",
                "pace_pct",
                "projected",
                "status",
                "laggard",
            ],
            [
                [
                    r.id,
                    w.label,
                    r.measure,
                    row.rank,
                    row.subject.key,
                    row.subject.name,
                    row.base,
                    row.target,
                    row.own,
                    row.reported,
                    row.actual,
                    row.attainment,
                    row.shortfall,
                    row.expected,
                    "" if row.pace is None else row.pace,
                    "" if row.projected is None else row.projected,
                    row.status,
                    int(row.laggard),
                ]
                for r, w, rows in results
                for row in rows
            ],
        )
        return
    if not results:
        console.print(f"no quota rule has a window at {report.where}")
        return
    for st in statuses:
        r, w, rows = st.rule, st.window, st.rows
        title = (
            f"{r.id} · {w.label} ({w.start}..{w.end}){' 进行中 (open)' if st.open else ''}\n"
            f"counts {r.measure_label} from {r.counted_sources} sends "
            f"against {q.share_label(r.final_share)} of {r.base}"
        )
        table_console().print(
            table(
                title,
                [
                    "#",
                    r.subject,
                    "name",
                    r.base,
                    "target",
                    "own",
                    "reported",
                    "counted",
                    "attain %",
                    "short",
                    "due now",
                    "pace %",
                    "projected",
                    "status",
                    "",
                ],
                [
                    [
                        row.rank,
                        row.subject.key,
                        row.subject.name,
                        row.base,
                        row.target,
                        row.own,
                        row.reported,
                        row.actual,
                        row.attainment,
                        row.shortfall,
                        row.expected,
                        row.pace,
                        row.projected,
                        _STATUS_MARK[row.status],
                        "laggard" if row.laggard else "",
                    ]
                    for row in rows
                ],
            )
        )
