"""The allowed sending hours (PINGAN_SENDING_HOURS): nothing is sent outside them."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo


def is_allowed(moment: dt.datetime, hours: tuple[dt.time, dt.time], tz: ZoneInfo) -> bool:
    local = moment.astimezone(tz).time()
    return hours[0] <= local < hours[1]


def next_allowed(moment: dt.datetime, hours: tuple[dt.time, dt.time], tz: ZoneInfo) -> dt.datetime:
    """`moment` itself if sending is allowed then, else the next opening, in UTC."""
    local = moment.astimezone(tz)
    if hours[0] <= local.time() < hours[1]:
        return moment.astimezone(dt.UTC)
    day = local.date() if local.time() < hours[0] else local.date() + dt.timedelta(days=1)
    return dt.datetime.combine(day, hours[0], tz).astimezone(dt.UTC)
