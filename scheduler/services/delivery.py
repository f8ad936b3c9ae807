"""Delivery use cases: where messages stand, and what is still to send."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scheduler import delivery_stats as domain
from scheduler.core import Core
from scheduler.exceptions import PingAnError
from scheduler.store import delivery as store

if TYPE_CHECKING:
    from scheduler.receipts import ReceiptsPulled

GROUPINGS = ("town", "carrier", "day", "error")
STATES: tuple[str, ...] = tuple(domain.STATES)


@dataclass(frozen=True)
class DeliveryStats:
    """Counts per state with the delivery rate, per group, and the top error codes."""

    month: str | None
    by: str
    counted_by: str
    rows: tuple[dict[str, Any], ...]
    top_errors: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "month": self.month,
            "by": self.by,
            "counted_by": self.counted_by,
            "rows": list(self.rows),
            "top_errors": list(self.top_errors),
        }


def delivery_stats(core: Core, month: str | None = None, by: str | None = None) -> DeliveryStats:
    """A month's messages (by the local day sent) or all of them, grouped by `by`."""
    if by is not None and by not in GROUPINGS:
        raise PingAnError(f"group by {', '.join(GROUPINGS)}, not {by!r}")
    data = domain.delivery_stats(core, month=month, by=by)
    return DeliveryStats(
        data["month"],
        data["by"],
        data["counted_by"],
        tuple(data["rows"]),
        tuple(data["top_errors"]),
    )


def messages_left(core: Core) -> dict[str, int]:
    """Messages not yet finished, by state (queued, retrying, sending...)."""
    return dict(store.unfinished(core.engine))


def pull_receipts(
    core: Core,
    *,
    older_than_seconds: float,
    limit: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReceiptsPulled:
    """Ask the configured provider about messages still `sent` (no receipt pushed) sent more
    than `older_than_seconds` ago, and apply the final states it reports."""
    from scheduler.providers import make_provider
    from scheduler.receipts import pull_receipts as pull

    provider = make_provider(core.settings)
    try:
        return pull(
            core,
            provider,
            older_than=dt.timedelta(seconds=older_than_seconds),
            recheck_after=dt.timedelta(0),
            limit=limit,
            on_progress=on_progress,
        )
    finally:
        provider.close()
