"""One month value and one phone mask, whoever reads a month or shows a number."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from scheduler.exceptions import PingAnError
from scheduler.logs import mask_text
from scheduler.periods import InvalidMonth, Month
from scheduler.phones import mask, mask_in_text

TZ = ZoneInfo("Asia/Shanghai")


def test_a_month_reads_and_prints_as_yyyy_mm() -> None:
    m = Month.parse(" 2022-10 ")
    assert (m, str(m)) == (Month(2022, 10), "2022-10")
    assert (m.first_day, m.last_day, m.days) == (dt.date(2022, 10, 1), dt.date(2022, 10, 31), 31)
    assert Month.of(dt.date(2024, 2, 29)).days == 29
    assert Month(2023, 2).days == 28


def test_next_and_previous_cross_the_year() -> None:
    assert Month(2022, 12).next == Month(2023, 1)
    assert Month(2023, 1).previous == Month(2022, 12)
    assert Month(2022, 10).next.previous == Month(2022, 10)
    assert Month(2022, 10) < Month(2022, 11) < Month(2023, 1)


def test_bounds_are_local_midnights() -> None:
    start, end = Month(2022, 10).bounds(TZ)
    assert start == dt.datetime(2022, 10, 1, tzinfo=TZ)
    assert end == dt.datetime(2022, 11, 1, tzinfo=TZ)
    assert start.astimezone(dt.UTC) == dt.datetime(2022, 9, 30, 16, tzinfo=dt.UTC)
    assert Month(2022, 10).contains(dt.date(2022, 10, 31))
    assert not Month(2022, 10).contains(dt.date(2022, 11, 1))


@pytest.mark.parametrize(
    "bad", ["2022-13", "2022-00", "2022-1", "202210", "2022/10", "", "0000-01"]
)
def test_anything_else_is_refused_as_a_usage_error(bad: str) -> None:
    with pytest.raises(InvalidMonth, match="YYYY-MM") as info:
        Month.parse(bad)
    # The CLI shows a PingAnError as one line; parsers that catch ValueError still work.
    assert isinstance(info.value, PingAnError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "number", ["13800138000", "+8613800138000", "8613800138000", "138-0013-8000"]
)
def test_numbers_in_text_are_masked_as_mask_masks_one(number: str) -> None:
    digits = "".join(ch for ch in number if ch.isdigit())
    text = f"sent to {digits}, done"
    assert mask_in_text(text) == f"sent to {mask(digits)}, done" == "sent to 138****8000, done"
    assert mask_text(text) == mask_in_text(text)


def test_other_digit_runs_are_left_alone() -> None:
    text = "case 2022101200001 amount 138001380001 id 1380013800"
    assert mask_in_text(text) == text
