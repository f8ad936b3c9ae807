"""Reported sends (what carriers and towns sent through their own channels): record, list."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler import sends as domain
from scheduler.core import Core
from scheduler.periods import Month
from scheduler.reports import carrier_name
from scheduler.services import audit
from scheduler.store import sends as store


def import_sends(core: Core, path: Path) -> domain.SendsImport:
    """A CSV of reported sends; bad rows are rejected with their line, the good ones kept."""
    return domain.import_sends(core, path)


def record_sends(
    core: Core, items: Iterable[tuple[str, Mapping[str, str]]], *, actor: audit.Actor
) -> domain.SendsImport:
    """(where, row) pairs from the API; a change goes to the audit log."""
    result = domain.record_sends(core, items)
    if result.inserted or result.updated:
        audit.record(core, actor, "sends", {"inserted": result.inserted, "updated": result.updated})
    return result


@dataclass(frozen=True)
class ReportedSendRow:
    source_kind: str
    source_id: str
    subject_kind: str
    subject_key: str
    period: str
    messages_sent: int
    people_reached: int | None
    note: str | None

    @property
    def source(self) -> str:
        return f"{self.source_kind}:{self.source_id}"

    @property
    def subject(self) -> str:
        return f"{self.subject_kind}:{self.subject_key}"

    @property
    def source_label(self) -> str:
        """A carrier by its Chinese name, a town by its id."""
        return carrier_name(self.source_id) if self.source_kind == "carrier" else self.source_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "subject": self.subject,
            "period": self.period,
            "messages_sent": self.messages_sent,
            "people_reached": self.people_reached,
            "note": self.note,
        }


def list_sends(core: Core, month: str | Month) -> list[ReportedSendRow]:
    """The reported sends counted in a month: those whose last day is in it."""
    m = Month.parse(str(month))
    return [
        ReportedSendRow(
            r.source_kind,
            r.source_id,
            r.subject_kind,
            r.subject_key,
            r.period,
            r.messages_sent,
            r.people_reached,
            r.note,
        )
        for r in store.list_sends(core.engine, m.first_day, m.last_day)
    ]
