"""`pingan report` and `pingan activities`: the monthly form, filled from the database."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler import activities as activities_core
from scheduler.cli.common import FORMAT_OPTION, OutputFormat, console, core, print_json, table
from scheduler.reports import build_monthly_report, write_report
from scheduler.store import activities as store

app = typer.Typer(help="The monthly report (平安宣传活动情况表).", no_args_is_help=True)
activities_app = typer.Typer(
    help="The report's manual columns per town and month.", no_args_is_help=True
)


@app.command("monthly")
def monthly(
    ctx: typer.Context,
    month: str = typer.Option(..., "--month", help="YYYY-MM"),
    out: Path = typer.Option(
        ...,
        "--out",
        help="FILE.xlsx (a form sheet per unit, then the tables), FILE.pdf (the same, A4), "
        "FILE.csv (the summary) or FILE.md.",
    ),
    town: str = typer.Option(
        None, "--town", help="That town's own form: 填报单位 the town, its rows only."
    ),
    file_it: bool = typer.Option(
        False, "--file-it", help="Record the month as filed: its activities become read-only."
    ),
) -> None:
    """Write the monthly report: attachment 7 per unit, summary, quota ranking, delivery by
    carrier, case check-back, weekly sends. Messages count on the local day they were sent."""
    c = core(ctx)
    report = build_monthly_report(c, month, town)
    path = write_report(report, out)
    if file_it:
        store.mark_filed(c.engine, month, str(path), now=c.clock())
    console.print(f"wrote {path}" + (" (filed)" if file_it else ""))


@activities_app.command("add")
def add(
    ctx: typer.Context,
    town: str = typer.Option(..., "--town"),
    month: str = typer.Option(..., "--month", help="YYYY-MM"),
    households_visited: int = typer.Option(None, help="走访村(社)住户(户)"),
    leaflets: int = typer.Option(None, help="发放倡议书、平安宣传手册、小礼品(份)"),
    banners: int = typer.Option(None, help="悬挂横幅(条)"),
    boards: int = typer.Option(None, help="设置平安宣传栏、LED显示屏(块)"),
    wechat_posts: int = typer.Option(None, help="推送平安宣传公众号(期)"),
    questionnaires: int = typer.Option(None, help="发放模拟问卷(份)"),
    volunteer_activities: int = typer.Option(None, help="开展平安志愿活动(次)"),
    other: str = typer.Option(None, help="其他"),
    description: str = typer.Option(None, help="活动开展情况"),
) -> None:
    """Create or edit a town's activities for a month (until the month's report is filed)."""
    c = core(ctx)
    values = {
        "households_visited": households_visited,
        "leaflets": leaflets,
        "banners": banners,
        "boards": boards,
        "wechat_posts": wechat_posts,
        "questionnaires": questionnaires,
        "volunteer_activities": volunteer_activities,
        "other": other,
        "description": description,
    }
    town_id = activities_core.add(c.engine, c.district, town, month, values, now=c.clock())
    console.print(f"saved activities of {town_id} for {month}")


@activities_app.command("import")
def import_(ctx: typer.Context, file: Path = typer.Argument(...)) -> None:
    """Import rows of town, month and the columns (English or the form's Chinese headers)."""
    c = core(ctx)
    done, problems = activities_core.import_file(c.engine, c.district, file, now=c.clock())
    console.print(f"{done} rows saved, {len(problems)} rejected")
    for p in problems:
        console.print(p, markup=False)
    if problems:
        raise typer.Exit(1)


@activities_app.command("list")
def list_(
    ctx: typer.Context,
    month: str = typer.Option(..., "--month"),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """A month's activities per town."""
    c = core(ctx)
    rows = [
        {"town": a.town_id, **{k: getattr(a, k) for k in store.ACTIVITY_FIELDS}}
        for a in store.activities_for(c.engine, activities_core.check_month(month)).values()
    ]
    if fmt == OutputFormat.json:
        print_json({"month": month, "filed": store.is_filed(c.engine, month), "rows": rows})
        return
    console.print(
        table(
            f"Activities {month}" + (" (filed)" if store.is_filed(c.engine, month) else ""),
            ["town", *store.ACTIVITY_FIELDS],
            [[r["town"], *[r[k] for k in store.ACTIVITY_FIELDS]] for r in rows],
        )
    )
