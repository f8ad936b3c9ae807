"""Recipient use cases: import a list, count what is loaded, record refusals."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler import recipients as domain
from scheduler.core import Core
from scheduler.exceptions import InvalidPhoneNumber
from scheduler.phones import mask, normalize
from scheduler.services import audit
from scheduler.store import recipients as store


def import_recipients(
    core: Core,
    path: Path,
    *,
    encoding: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> domain.ImportSummary:
    """Upsert a recipient CSV by phone; bad rows go to `<stem>.rejects.csv` with reasons."""
    return domain.import_recipients_file(
        core.engine, core.district, path, encoding=encoding, on_progress=on_progress
    )


@dataclass(frozen=True)
class RecipientCounts:
    total: int
    opted_out: int
    opted_out_in_lists: int
    by_town: dict[str, int]
    by_village: dict[str, int]
    by_carrier: dict[str, int]
    by_segment: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "opted_out": self.opted_out,
            "opted_out_in_lists": self.opted_out_in_lists,
            "by_town": self.by_town,
            "by_village": self.by_village,
            "by_carrier": self.by_carrier,
            "by_segment": self.by_segment,
        }


def recipient_counts(core: Core) -> RecipientCounts:
    """Counts by town, village, carrier and segment, and how many opted out."""
    return RecipientCounts(**store.stats(core.engine))


@dataclass(frozen=True)
class RejectedNumber:
    where: str  # "argument", "FILE, line 3", "phones[2]"
    value: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "phone": mask(self.value), "reason": self.reason}


@dataclass(frozen=True)
class OptOutResult:
    accepted: tuple[str, ...]  # normalised, in the order given (repeats kept)
    new: int
    cancelled: int
    rejected: tuple[RejectedNumber, ...]

    @property
    def recorded(self) -> int:
        """Distinct numbers recorded (new or already refused)."""
        return len(set(self.accepted))

    def to_dict(self) -> dict[str, Any]:
        return {
            "recorded": self.recorded,
            "new": self.new,
            "cancelled": self.cancelled,
            "rejected": [r.to_dict() for r in self.rejected],
        }


def opt_out(
    core: Core,
    numbers: Iterable[tuple[str, str]],
    *,
    source: str,
    reason: str | None = None,
    actor: audit.Actor | None = None,
) -> OptOutResult:
    """Record refusals of (where, number) pairs: the valid numbers are recorded and their
    queued and retrying messages cancelled in one transaction, whatever the invalid ones;
    with an actor, the change goes to the audit log."""
    accepted: list[str] = []
    rejected: list[RejectedNumber] = []
    for where, value in numbers:
        try:
            accepted.append(normalize(value))
        except InvalidPhoneNumber as exc:
            rejected.append(RejectedNumber(where, value, str(exc)))
    new, cancelled = store.record_opt_outs_counted(
        core.engine, accepted, source=source, reason=reason, now=core.clock()
    )
    if actor is not None and accepted:
        audit.record(
            core,
            actor,
            "opt-outs",
            {"phones": sorted(set(accepted)), "new": new, "source": source},
        )
    return OptOutResult(tuple(accepted), new, cancelled, tuple(rejected))
