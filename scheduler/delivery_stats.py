"""Delivery statistics: where messages stand, the delivery rate and the top error codes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from scheduler.core import Core
from scheduler.exceptions import PingAnError
from scheduler.models import MessageState
from scheduler.providers.base import error_catalogue
from scheduler.store import delivery
from scheduler.store.optouts import OPTED_OUT

STATES = [s.value for s in MessageState]
# Reasons we record ourselves in error_code, beside the provider's codes.
OWN_REASONS = {OPTED_OUT: "Resident opted out; message cancelled / 居民已退订，消息已取消"}


def month_bounds(month: str, tz: Any) -> tuple[dt.datetime, dt.datetime]:
    try:
        first = dt.datetime.strptime(month, "%Y-%m").date()
    except ValueError:
        raise PingAnError(f"month {month!r} is not YYYY-MM") from None
    nxt = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return dt.datetime.combine(first, dt.time(0), tz), dt.datetime.combine(nxt, dt.time(0), tz)


def delivery_stats(core: Core, *, month: str | None, by: str | None) -> dict[str, Any]:
    tz = core.settings.tz
    start, end = month_bounds(month, tz) if month else (None, None)
    rows = delivery.delivery_breakdown(core.engine, by=by, start=start, end=end, tz=tz)
    out_rows = []
    for r in rows:
        counts = {s: int(r.get(s, 0)) for s in STATES}  # type: ignore[call-overload]
        finished = counts["delivered"] + counts["undelivered"] + counts["failed"]
        out_rows.append(
            {
                "key": r["key"],
                **counts,
                "total": sum(counts.values()),
                "delivery_rate": round(counts["delivered"] / finished, 4) if finished else None,
            }
        )
    catalogue = error_catalogue(core.settings.config_dir)
    errors = [
        {
            "code": code,
            "count": n,
            "meaning": catalogue[code].meaning if code in catalogue else OWN_REASONS.get(code, ""),
        }
        for code, n in delivery.top_errors(core.engine, start=start, end=end)
    ]
    return {"month": month, "by": by or "all", "rows": out_rows, "top_errors": errors}
