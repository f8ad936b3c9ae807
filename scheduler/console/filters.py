"""Jinja filters that write dates and weeks the way a Chinese office form does."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

_WEEK_LABEL = re.compile(r"^\d{4}-W(\d{1,2})$")


def _local(value: dt.datetime, tz: ZoneInfo | None) -> dt.datetime:
    if tz is not None and value.tzinfo is not None:
        return value.astimezone(tz)
    return value


def zh_date(value: dt.date | dt.datetime | str | None, tz: ZoneInfo | None = None) -> str:
    """2022年10月10日 (a datetime is first moved to the office's time zone)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = dt.date.fromisoformat(value[:10])
    if isinstance(value, dt.datetime):
        value = _local(value, tz).date()
    return f"{value.year}年{value.month}月{value.day}日"


def zh_datetime(value: dt.datetime | None, tz: ZoneInfo | None = None) -> str:
    """2022年10月10日 09:30, in the office's time zone."""
    if value is None:
        return ""
    local = _local(value, tz)
    return f"{zh_date(local)} {local:%H:%M}"


def zh_week(value: dt.date | dt.datetime | str | None, tz: ZoneInfo | None = None) -> str:
    """第42周: the ISO week of a date, or of a week label such as 2022-W42 (the quota rules')."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        match = _WEEK_LABEL.match(value.strip())
        if match:
            return f"第{int(match.group(1))}周"
        value = dt.date.fromisoformat(value[:10])
    if isinstance(value, dt.datetime):
        value = _local(value, tz).date()
    return f"第{value.isocalendar().week}周"
