"""`pingan templates`: see, check and approve the messages operators edit."""

from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from scheduler.cli.common import FORMAT_OPTION, OutputFormat, console, core, print_json, table
from scheduler.core import Core
from scheduler.exceptions import PingAnError, TemplateError
from scheduler.services.templates import approve_template
from scheduler.templating import Catalogue

app = typer.Typer(help="Message templates: list, preview, lint, approve.", no_args_is_help=True)

STATE_LABEL = {
    "approved": "approved",
    "changed": "CHANGED since approval",
    "never": "never approved",
}


def _pools_used(c: Core) -> list[str]:
    try:
        return [camp.pool for camp in c.campaigns.all if camp.pool]
    except PingAnError:
        return []


@app.command("list")
def list_templates(ctx: typer.Context, fmt: OutputFormat = FORMAT_OPTION) -> None:
    """Every template: channel, audience, length for the sample district, approval state."""
    c = core(ctx)
    cat = c.catalogue
    rows: list[dict[str, Any]] = []
    for name in cat.names():
        info = cat.get(name)
        chars: int | None = None
        segments: int | None = None
        error = None
        try:
            rendered = cat.render(name, cat.sample_context(info))
            chars, segments = rendered.chars, rendered.segments
        except TemplateError as exc:
            error = str(exc)
        rows.append(
            {
                "name": name,
                "channel": info.channel,
                "theme": info.theme,
                "audience": list(info.audience),
                "pool": info.pool,
                "chars": chars,
                "segments": segments if info.channel == "sms" else None,
                "modified_at": info.modified_at.astimezone(c.settings.tz).isoformat(
                    timespec="seconds"
                ),
                "approval": cat.approval_state(name),
                "hash": info.source_hash,
                "error": error,
            }
        )
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
    c = core(ctx)
    cat = c.catalogue
    info = cat.get(name)
    district = c.district
    town_obj = district.find_town(town) if town else district.towns[0]
    village_obj = (
        district.find_village(town_obj, village)
        if village
        else (town_obj.villages[0] if town_obj.villages else None)
    )
    sample = cat.sample_context(info)
    ctx_vars = cat.context(
        town=town_obj,
        village=village_obj if info.channel == "sms" else None,
        recipient={"name": "张三", "segments": [segment] if segment else []}
        if info.channel == "sms"
        else None,
        extra={k: sample[k] for k in ("fraud_type", "amount_band", "case_date") if k in sample},
        today=dt.date.today(),
    )
    rendered = cat.render(name, ctx_vars)
    data = {
        "name": name,
        "channel": info.channel,
        "town": town_obj.id,
        "village": village_obj.id if village_obj else None,
        "text": rendered.text,
        "chars": rendered.chars,
        "segments": rendered.segments,
        "encoding": rendered.encoding,
        "template_hash": rendered.template_hash,
        "approval": cat.approval_state(name),
    }
    if fmt == OutputFormat.json:
        print_json(data)
        return
    console.print(rendered.text, markup=False, highlight=False)
    if info.channel == "sms":
        console.print(
            f"[dim]{rendered.chars} characters, {rendered.segments} segment(s), "
            f"{rendered.encoding}; {STATE_LABEL[cat.approval_state(name)]}[/]"
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
    c = core(ctx)
    cat: Catalogue = c.catalogue
    problems = cat.lint(names or None, pools_used=_pools_used(c))
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
            console.print(f"{len(names or cat.names())} template(s) ok")
    if problems:
        raise typer.Exit(1)


@app.command("approve")
def approve(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Template to approve as it is now."),
    by: str = typer.Option(..., "--by", help="Who reviewed it."),
) -> None:
    """Record approval of the template's current content (its sha256) in approvals.yaml."""
    approval = approve_template(core(ctx), name, by)
    console.print(f"approved {name} ({approval.source_hash[:12]}) by {by}")
