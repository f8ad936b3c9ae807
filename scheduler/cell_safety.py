"""Spreadsheet cells that cannot run as formulas (CSV/xlsx injection).

A text cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is read as a formula by
Excel and LibreOffice; a leading apostrophe makes it plain text. Numbers are left alone.
"""

from __future__ import annotations

_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: object) -> object:
    """`value`, with a leading `'` if it is a str a spreadsheet would take for a formula."""
    if isinstance(value, str) and value.startswith(_TRIGGERS):
        return "'" + value
    return value
