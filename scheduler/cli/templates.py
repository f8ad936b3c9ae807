"""`pingan templates`: see, check and approve the messages operators edit."""

from __future__ import annotations

import typer

from scheduler.cli.common import FORMAT_OPTION, OutputFormat, console, core, print_json, table

app = typer.Typer(help="Message templates: list, preview, lint, approve.", no_args_is_help=True)

STATE_LABEL = {
    "approved": "approved",
    "changed": "CHANGED since approval",
    "never": "never approved",
}


@app.command("list")
def list_templates(ctx: typer.Context, fmt: OutputFormat = FORMAT_OPTION) -> None:
    """Every template: channel, audience, length for the sample district, approval state."""
    from scheduler.services import templates

    c = core(ctx)
    cat = c.catalogue
    rows = [t.to_dict() for t in templates.list_templates(c)]
    if fmt == OutputFormat.json:
        print_json(rows)
        return
    console.print(
        table(
            f"Templates in {cat.dir}",
            ["name", "channel", "audience", "chars", "segments", "modified", "approval"],
            [
                [
                    r["name"] + (f" ({r['pool']})" if r["pool"] else ""),
                    r["channel"],
                    ",".join(r["audience"]),
                    r["chars"] if r["chars"] is not None else "error",
                    r["segments"] if r["segments"] is not None else "-",
                    r["modified_at"][:16],
                    STATE_LABEL[r["approval"]],
                ]
                for r in rows
            ],
        )
    )


@app.command("preview")
def preview(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Template name, e.g. survey-notice."),
    town: str = typer.Option(None, "--town", help="Town id or name (default: the first)."),
    village: str = typer.Option(None, "--village", help="Village id or name in that town."),
    segment: str = typer.Option(None, "--segment", help="Recipient segment, e.g. elderly."),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """The rendered text exactly as a phone shows it, with character and segment counts."""
    from scheduler.services import templates

    data = templates.preview_template(
        core(ctx), name, town=town, village=village, segment=segment
    ).to_dict()
    if fmt == OutputFormat.json:
        print_json(data)
        return
    console.print(data["text"], markup=False, highlight=False)
    if data["channel"] == "sms":
        console.print(
            f"[dim]{data['chars']} characters, {data['segments']} segment(s), "
            f"{data['encoding']}; {STATE_LABEL[data['approval']]}[/]"
        )


@app.command("lint")
def lint(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Templates to check (default: all)."),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Check templates: syntax, variables, signature, opt-out, length, audience, pools.

    Exits 1 and names file, line and reason for each problem; 0 when all is well.
    """
    from scheduler.services import templates

    c = core(ctx)
    problems = templates.lint_templates(c, names)
    if fmt == OutputFormat.json:
        print_json(
            [
                {"path": str(p.path), "line": p.line, "name": p.name, "reason": p.reason}
                for p in problems
            ]
        )
    else:
        for p in problems:
            # Plain lines, never wrapped: editors and scripts jump to file:line.
            print(p)
        if not problems:
            console.print(f"{len(names or c.catalogue.names())} template(s) ok")
    if problems:
        raise typer.Exit(1)


@app.command("approve")
def approve(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Template to approve as it is now."),
    by: str = typer.Option(..., "--by", help="Who reviewed it."),
) -> None:
    """Record approval of the template's current content (its sha256) in approvals.yaml."""
    from scheduler.services import templates

    approval = templates.approve_template(core(ctx), name, by)
    console.print(f"approved {name} ({approval.source_hash[:12]}) by {by}")
