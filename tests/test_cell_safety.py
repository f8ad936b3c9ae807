"""The OWASP CSV-injection rule, and the writers of this package that apply it."""

from __future__ import annotations

import datetime as dt

import pytest

from scheduler.cell_safety import neutralise_cell


@pytest.mark.parametrize(
    "text",
    ["=1+1", "+86 138", "-5", "@SUM(A1)", "\t=cmd", "\r=cmd", '=HYPERLINK("http://x","y")'],
)
def test_formula_like_text_gets_a_leading_quote(text: str) -> None:
    assert neutralise_cell(text) == "'" + text


@pytest.mark.parametrize("text", ["", "平安", "13800138000", "a=b", " =1", "'=1", "1-2"])
def test_other_text_is_unchanged(text: str) -> None:
    assert neutralise_cell(text) == text


@pytest.mark.parametrize("value", [None, -5, 3.5, True, dt.date(2026, 1, 1)])
def test_non_text_values_are_unchanged(value: object) -> None:
    assert neutralise_cell(value) is value
