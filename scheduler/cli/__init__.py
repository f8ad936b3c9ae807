"""The `pingan` command: a thin layer, each command calling one core function.

Sub-commands live in one module per area (recipients, templates, campaigns, ...) and are
mounted here.
"""

from __future__ import annotations

from scheduler.cli.app import app, main

__all__ = ["app", "main"]
