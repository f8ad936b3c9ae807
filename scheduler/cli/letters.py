"""`pingan letters`: Open letters to residents, rendered for print."""

from __future__ import annotations

import typer

app = typer.Typer(help="Open letters to residents, rendered for print.", no_args_is_help=True)
