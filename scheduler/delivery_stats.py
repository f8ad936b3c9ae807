"""Delivery statistics: where messages stand, the delivery rate and the top error codes.

A message counts on the local day it was sent (the district's time zone), as in quota status
and the monthly report; messages not yet sent are shown as pending by the day they were queued
(`queued`, `sending`, `pending`) and are never part of `total`.
"""

from __future__ import annotations

from typing import Any

from scheduler.core import Core
from scheduler.models import MessageState
from scheduler.numbers import ratio
from scheduler.periods import Month
from scheduler.providers import error_meanings
from scheduler.store import delivery
from scheduler.store.optouts import OPTED_OUT

STATES = [s.value for s in MessageState]
PENDING = [s.value for s in delivery.PENDING_STATES]
# Cancelled messages (the resident opted out first) never went out: shown, but not in total.
NOT_SENT = [*PENDING, MessageState.CANCELLED.value]
# Reasons we record ourselves in error_code, beside the provider's codes.
OWN_REASONS = {OPTED_OUT: "Resident opted out; message cancelled / 居民已退订，消息已取消"}


def delivery_stats(core: Core, *, month: str | None, by: str | None) -> dict[str, Any]:
    tz = core.settings.tz
    start, end = Month.parse(month).bounds(tz) if month else (None, None)
    rows = delivery.delivery_breakdown(core.engine, by=by, start=start, end=end, tz=tz)
    out_rows = []
    for r in rows:
        counts = {s: int(r.get(s, 0)) for s in STATES}  # type: ignore[call-overload]
        finished = counts["delivered"] + counts["undelivered"] + counts["failed"]
        rate = ratio(counts["delivered"], finished)
        out_rows.append(
            {
                "key": r["key"],
                **counts,
                "total": sum(n for s, n in counts.items() if s not in NOT_SENT),
                "pending": sum(counts[s] for s in PENDING),
                "delivery_rate": None if rate is None else float(rate),
            }
        )
    catalogue = error_meanings(core.settings.config_dir)
    errors = [
        {
            "code": code,
            "count": n,
            "meaning": catalogue[code].meaning if code in catalogue else OWN_REASONS.get(code, ""),
        }
        for code, n in delivery.top_errors(core.engine, start=start, end=end)
    ]
    return {
        "month": month,
        "by": by or "all",
        "counted_by": "local day sent; pending (queued, sending) by local day queued",
        "rows": out_rows,
        "top_errors": errors,
    }
