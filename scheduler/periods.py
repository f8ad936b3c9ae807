"""Months as values: the one place a `YYYY-MM` string is read.

The CLI, the API, the report, delivery statistics and the activities all name a month the
same way; parsing it once means one rule for what is accepted and one error for what is not.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from scheduler.exceptions import PingAnError

_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")


class InvalidMonth(PingAnError, ValueError):
    """Not a month written as YYYY-MM."""


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """`2022-10` (surrounding spaces ignored); anything else raises InvalidMonth."""
        m = _MONTH.fullmatch(text.strip()) if isinstance(text, str) else None
        if m is None or int(m.group(1)) < 1:
            raise InvalidMonth(f"month {text!r} is not YYYY-MM (e.g. 2022-10)")
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def of(cls, day: dt.date) -> Month:
        return cls(day.year, day.month)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> dt.date:
        return dt.date(self.year, self.month, 1)

    @property
    def last_day(self) -> dt.date:
        return self.next.first_day - dt.timedelta(days=1)

    @property
    def days(self) -> int:
        return self.last_day.day

    @property
    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    @property
    def previous(self) -> Month:
        return Month(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    def contains(self, day: dt.date) -> bool:
        return self.first_day <= day <= self.last_day

    def bounds(self, tz: Any) -> tuple[dt.datetime, dt.datetime]:
        """[local midnight of the 1st, local midnight of the next month's 1st) in `tz`:
        a message counts in the month of the local day it was sent."""
        return (
            dt.datetime.combine(self.first_day, dt.time(0), tz),
            dt.datetime.combine(self.next.first_day, dt.time(0), tz),
        )
