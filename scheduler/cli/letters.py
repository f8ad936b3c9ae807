"""`pingan letters`: the open letter to residents, ready to print."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.cli.common import console, core

app = typer.Typer(help="Open letters to residents, rendered for print.", no_args_is_help=True)


@app.command("render")
def render(
    ctx: typer.Context,
    town: str = typer.Option(..., "--town", help="Town id or name."),
    out: Path = typer.Option(Path("var/letters"), "--out", help="Folder to write into."),
    template: str = typer.Option("letter-to-residents", "--template", help="Letter template."),
    pdf: bool = typer.Option(False, "--pdf", help="Also write the letter as an A4 PDF."),
) -> None:
    """Write the letter for a town as a print-ready HTML file (A4, Chinese fonts declared),
    dated today in the district's time zone (PINGAN_TIMEZONE), and with --pdf as PDF too."""
    c = core(ctx)
    town_obj = c.district.find_town(town)
    cat = c.catalogue
    today = c.clock().astimezone(c.settings.tz).date()
    rendered = cat.render(template, cat.context(town=town_obj, today=today))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{template}-{town_obj.id}.html"
    path.write_text(rendered.text, encoding="utf-8")
    console.print(f"wrote {path} ({cat.approval_state(template)})")
    if pdf:
        from scheduler.reports import write_pdf

        pdf_path = write_pdf(rendered.text, path.with_suffix(".pdf"))
        console.print(f"wrote {pdf_path}")
