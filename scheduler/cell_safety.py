"""Cells that are safe to open: text a spreadsheet would run as a formula is kept as text.

Excel, WPS and LibreOffice treat a cell starting with `=`, `+`, `-` or `@` as a formula (and
tab or carriage return can smuggle one past a check), both in xlsx and in CSV. A case id,
an activity's text or a rejected row comes from outside, so every writer passes its text cells
through here (the OWASP CSV-injection rule: prefix a `'`).
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: object) -> object:
    """`'` before a str that starts like a formula; every other value unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
