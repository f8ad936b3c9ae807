"""`pingan report` and `pingan activities`: the monthly form, filled from the database."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.cli.common import FORMAT_OPTION, OutputFormat, console, core, print_json, table

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
    from scheduler.services.reports import write_monthly_report

    written = write_monthly_report(core(ctx), month, out, town=town, file_it=file_it)
    console.print(f"wrote {written.path}" + (" (filed)" if written.filed else ""))


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
    from scheduler.services import activities

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
    town_id = activities.save_activities(core(ctx), town, month, values)
    console.print(f"saved activities of {town_id} for {month}")


@activities_app.command("import")
def import_(ctx: typer.Context, file: Path = typer.Argument(...)) -> None:
    """Import rows of town, month and the columns (English or the form's Chinese headers)."""
    from scheduler.services import activities

    result = activities.import_activities(core(ctx), file)
    console.print(f"{result.saved} rows saved, {len(result.problems)} rejected")
    for p in result.problems:
        console.print(p, markup=False)
    if result.problems:
        raise typer.Exit(1)


@activities_app.command("list")
def list_(
    ctx: typer.Context,
    month: str = typer.Option(..., "--month"),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """A month's activities per town."""
    from scheduler.services import activities

    listed = activities.list_activities(core(ctx), month)
    if fmt == OutputFormat.json:
        print_json(listed.to_dict())
        return
    console.print(
        table(
            f"Activities {listed.month}" + (" (filed)" if listed.filed else ""),
            ["town", *activities.FIELDS],
            [[r["town"], *[r[k] for k in activities.FIELDS]] for r in listed.rows],
        )
    )
