"""Dates and weeks on the console's pages, as a Chinese office form writes them."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from scheduler.console.filters import zh_date, zh_datetime, zh_week
from scheduler.console.pages import make_environment
from scheduler.core import Core
from scheduler.settings import Settings

TZ = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.date(2022, 10, 10), "2022年10月10日"),
        (dt.date(2023, 1, 5), "2023年1月5日"),
        ("2022-11-01", "2022年11月1日"),
        # 17:00 UTC on the 9th is already the 10th in Shanghai.
        (dt.datetime(2022, 10, 9, 17, 0, tzinfo=dt.UTC), "2022年10月10日"),
        (None, ""),
    ],
)
def test_zh_date(value: dt.date | str | None, expected: str) -> None:
    assert zh_date(value, TZ) == expected


def test_zh_datetime_is_local_time() -> None:
    assert zh_datetime(dt.datetime(2022, 10, 10, 1, 30, tzinfo=dt.UTC), TZ) == (
        "2022年10月10日 09:30"
    )
    assert zh_datetime(None, TZ) == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2022-W42", "第42周"),
        ("2022-W01", "第1周"),
        (dt.date(2022, 10, 17), "第42周"),  # a Monday: ISO week 42 starts here
        (dt.date(2022, 10, 16), "第41周"),  # the Sunday before still belongs to week 41
        (dt.date(2023, 1, 1), "第52周"),  # ISO: 1 January 2023 closes 2022's week 52
        (dt.datetime(2022, 10, 16, 16, 30, tzinfo=dt.UTC), "第42周"),  # Monday 00:30 local
    ],
)
def test_zh_week(value: dt.date | str, expected: str) -> None:
    assert zh_week(value, TZ) == expected


def test_filters_are_registered_in_the_templates() -> None:
    env = make_environment(Core(Settings()))
    rendered = env.from_string("{{ d|zh_date }} {{ d|zh_week }} {{ w|zh_week }}").render(
        d=dt.date(2022, 10, 10), w="2022-W42"
    )
    assert rendered == "2022年10月10日 第41周 第42周"
