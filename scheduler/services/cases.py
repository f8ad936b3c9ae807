"""Fraud case use cases: import a file, record cases from the API; alerts follow."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler import cases as domain
from scheduler.core import Core
from scheduler.services import audit


def import_cases(core: Core, path: Path, *, at: dt.datetime | None = None) -> domain.CaseImport:
    """Import a case CSV. `at` (aware) rehearses on a scratch database: alerts are scheduled
    as if it were that moment."""
    if at is not None:
        fixed = at
        core.clock = lambda: fixed
    return domain.import_cases(core, path)


@dataclass(frozen=True)
class CasesRecorded:
    """Either every case was valid and stored (`rejected` empty), or none was."""

    inserted: int = 0
    unchanged: int = 0
    alerts: tuple[dict[str, Any], ...] = ()
    rejected: tuple[dict[str, Any], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        if self.rejected:
            return {"rejected": list(self.rejected)}
        return {"inserted": self.inserted, "unchanged": self.unchanged, "alerts": list(self.alerts)}


def record_cases(
    core: Core, items: Sequence[Mapping[str, str]], *, actor: audit.Actor
) -> CasesRecorded:
    """Cases from the API: all or nothing; a stored batch goes to the audit log."""
    tz = core.settings.tz
    rows, rejected = [], []
    for i, item in enumerate(items):
        try:
            rows.append(domain.parse_case(core, dict(item), tz))
        except (ValueError, OverflowError) as exc:
            rejected.append({"index": i, "reason": str(exc)})
    if rejected:
        return CasesRecorded(rejected=tuple(rejected))
    result = domain.record_cases(core, rows)
    if rows:
        audit.record(
            core,
            actor,
            "cases",
            {
                "case_ids": [r["case_id"] for r in rows],
                "inserted": result.inserted,
                "alerts": len(result.alerts),
            },
        )
    return CasesRecorded(result.inserted, result.unchanged, tuple(result.alerts))
