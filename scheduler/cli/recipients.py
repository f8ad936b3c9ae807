"""`pingan recipients`: Recipient lists: import, stats, opt-outs, sample data."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Recipient lists: import, stats, opt-outs, sample data.", no_args_is_help=True
)
