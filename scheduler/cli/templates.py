"""`pingan templates`: Message templates: list, preview, lint, approve."""

from __future__ import annotations

import typer

app = typer.Typer(help="Message templates: list, preview, lint, approve.", no_args_is_help=True)
