"""What every command shares: the core from the context, output formats, the error handler."""

from __future__ import annotations

import enum
import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from scheduler.core import Core

console = Console()
err_console = Console(stderr=True)


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


FORMAT_OPTION = typer.Option(
    OutputFormat.table, "--format", "-f", help="table, or json for scripts."
)


def core(ctx: typer.Context) -> Core:
    obj = ctx.find_root().obj
    if not isinstance(obj, Core):
        obj = Core()
        ctx.find_root().obj = obj
    return obj


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t
