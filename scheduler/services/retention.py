"""Retention use cases: partitions created ahead, old months archived and dropped.

`pingan db prune --before YYYY-MM` and the service's daily job (PINGAN_RETENTION__MONTHS)
both call `prune`. Each month is archived and dropped in its own transaction, so a run killed
half-way leaves whole months either pruned or untouched, and the next run carries on.

Quotas and monthly reports count sends from `send_counters`, which pruning never touches: a
pruned month's SMS figures stay what they were. What is read from the messages themselves
(people reached, delivery rates per carrier, the case check-back) is in the month's archive.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scheduler.core import Core
from scheduler.exceptions import PingAnError
from scheduler.periods import InvalidMonth, Month
from scheduler.store import retention as store


class PruneRefused(PingAnError):
    """A month cannot be pruned (too recent, or messages still on their way)."""


@dataclass(frozen=True)
class PruneResult:
    before: str
    dry_run: bool
    archive_dir: str
    months: tuple[store.MonthPruned, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "dry_run": self.dry_run,
            "archive_dir": self.archive_dir,
            "months": [asdict(m) for m in self.months],
        }


def archive_dir(core: Core) -> Path:
    return core.settings.data_dir / "archive"


def _current_month(core: Core) -> Month:
    return Month.of(core.clock().astimezone(core.settings.tz).date())


def prune(
    core: Core,
    before: str,
    *,
    dry_run: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> PruneResult:
    """Archive and drop every month earlier than `before` (YYYY-MM), oldest first.

    The current month is never pruned (`before` may be at most the current month). A month
    with messages still queued or being sent stops the run there: months before it stay
    pruned, it and later ones untouched.
    """
    try:
        limit = Month.parse(before)
    except InvalidMonth as exc:
        raise PingAnError(f"--before: {exc}") from None
    current = _current_month(core)
    if limit > current:
        raise PruneRefused(
            f"--before {limit} would prune the current month ({current}) or later; "
            f"the latest allowed is --before {current}"
        )
    tz = core.settings.tz
    engine = core.engine
    folder = archive_dir(core)
    # Months archived by an earlier run are listed too (as skipped): a re-run shows them.
    months = sorted(set(store.months_before(engine, limit, tz)) | _archived(folder, limit))
    done: list[store.MonthPruned] = []
    if on_progress is not None:
        on_progress(0, len(months))
    for i, month in enumerate(months, 1):
        try:
            done.append(
                store.prune_month(engine, month, archive_dir=folder, tz=tz, dry_run=dry_run)
            )
        except store.UnfinishedMessages as exc:
            earlier = f" (pruned before it: {', '.join(d.month for d in done)})" if done else ""
            raise PruneRefused(
                f"{exc.month}: {exc.count} message(s) still queued or being sent; let the "
                "dispatcher finish them (or cancel the occurrence) before pruning this month"
                + earlier
            ) from None
        if on_progress is not None:
            on_progress(i, len(months))
    return PruneResult(str(limit), dry_run, str(folder), tuple(done))


def _archived(folder: Path, before: Month) -> set[Month]:
    found: set[Month] = set()
    for path in folder.glob("messages-*.csv.gz") if folder.is_dir() else []:
        try:
            month = Month.parse(path.name.removeprefix("messages-").removesuffix(".csv.gz"))
        except InvalidMonth:
            continue
        if month < before:
            found.add(month)
    return found


def retention_cutoff(core: Core) -> Month | None:
    """The `--before` month PINGAN_RETENTION__MONTHS implies today; None when it is 0."""
    keep = core.settings.retention.months
    if not keep:
        return None
    month = _current_month(core)
    for _ in range(keep):
        month = month.previous
    return month


@dataclass(frozen=True)
class Housekeeping:
    """What the daily partition job did."""

    created: tuple[str, ...]
    pruned: PruneResult | None


def daily_partitions(core: Core) -> Housekeeping:
    """The service's daily job: partitions for this month and PINGAN_RETENTION__PARTITIONS_AHEAD
    months ahead (PostgreSQL), then the retention setting applied (if any)."""
    settings = core.settings
    today: dt.date = core.clock().astimezone(settings.tz).date()
    created = store.ensure_months(
        core.engine, today, settings.retention.partitions_ahead, settings.tz
    )
    cutoff = retention_cutoff(core)
    pruned = prune(core, str(cutoff)) if cutoff is not None else None
    return Housekeeping(tuple(created), pruned)
