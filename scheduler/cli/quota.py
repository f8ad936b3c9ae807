"""`pingan quota`: Quotas: targets and attainment."""

from __future__ import annotations

import typer

app = typer.Typer(help="Quotas: targets and attainment.", no_args_is_help=True)
