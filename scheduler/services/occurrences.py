"""Occurrence use cases (one firing of a campaign): history, pause, resume, retry."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from scheduler.core import Core
from scheduler.exceptions import UnknownName
from scheduler.expansion import ExpansionResult
from scheduler.models import Occurrence
from scheduler.store import outbox


def local_minute(t: dt.datetime | None, tz: Any) -> str | None:
    return t.astimezone(tz).strftime("%Y-%m-%d %H:%M") if t else None


@dataclass(frozen=True)
class OccurrenceView:
    """An occurrence as people read it: scheduled time in the district's zone."""

    id: int
    campaign: str
    scheduled_at: str | None
    kind: str
    channel: str
    state: str
    paused: bool
    queued: int
    excluded: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def of(cls, o: Occurrence, tz: Any) -> OccurrenceView:
        return cls(
            id=o.id,
            campaign=o.campaign,
            scheduled_at=local_minute(o.scheduled_at, tz),
            kind=str(o.kind),
            channel=str(o.channel),
            state=str(o.state),
            paused=bool(o.paused),
            queued=int(o.queued or 0),
            excluded=dict(o.excluded or {}),
            error=o.error,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "campaign": self.campaign,
            "scheduled_at": self.scheduled_at,
            "kind": self.kind,
            "channel": self.channel,
            "state": self.state,
            "paused": self.paused,
            "queued": self.queued,
            "excluded": dict(self.excluded),
            "error": self.error,
        }


@dataclass(frozen=True)
class FiringResult:
    """What one expansion did (a campaign run now, or a failed occurrence retried)."""

    occurrence_id: int
    campaign: str
    state: str
    queued: int
    excluded: dict[str, int]
    error: str | None

    @property
    def failed(self) -> bool:
        return self.state == "failed" or self.error is not None

    @classmethod
    def of(cls, result: ExpansionResult) -> FiringResult:
        return cls(
            result.occurrence_id,
            result.campaign,
            str(result.state),
            result.queued,
            dict(result.excluded),
            result.error,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "occurrence_id": self.occurrence_id,
            "campaign": self.campaign,
            "state": self.state,
            "queued": self.queued,
            "excluded": dict(self.excluded),
            "error": self.error,
        }


def list_occurrences(
    core: Core, *, campaign: str | None = None, limit: int = 50
) -> list[OccurrenceView]:
    """Newest first, with their counts per exclusion reason."""
    tz = core.settings.tz
    return [
        OccurrenceView.of(o, tz)
        for o in outbox.list_occurrences(core.engine, campaign=campaign, limit=limit)
    ]


def last_occurrences(core: Core) -> dict[str, OccurrenceView]:
    """Each campaign's latest occurrence."""
    tz = core.settings.tz
    return {
        name: OccurrenceView.of(o, tz) for name, o in outbox.last_occurrences(core.engine).items()
    }


def _set_paused(core: Core, occurrence_id: int, paused: bool) -> None:
    if not outbox.set_paused(core.engine, occurrence_id, paused):
        raise UnknownName(f"no occurrence {occurrence_id}")


def pause_occurrence(core: Core, occurrence_id: int) -> None:
    """Stop sending the occurrence's queued messages until resumed (UnknownName if none)."""
    _set_paused(core, occurrence_id, True)


def resume_occurrence(core: Core, occurrence_id: int) -> None:
    _set_paused(core, occurrence_id, False)


def retry_occurrence(core: Core, occurrence_id: int) -> FiringResult:
    """Run a failed occurrence again at its scheduled time; nobody queued is queued again."""
    return FiringResult.of(core.planner().retry(occurrence_id))
