"""The report's manual columns (走访、横幅…) per town and month: save, import, list."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler import activities as domain
from scheduler.core import Core
from scheduler.periods import Month
from scheduler.store import activities as store

FIELDS: tuple[str, ...] = tuple(store.ACTIVITY_FIELDS)


def save_activities(core: Core, town: str, month: str, values: dict[str, Any]) -> str:
    """Create or edit a town's month (refused once the month is filed); returns the town id."""
    return domain.add(core.engine, core.district, town, month, values, now=core.clock())


@dataclass(frozen=True)
class ActivitiesImport:
    saved: int
    problems: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"saved": self.saved, "problems": list(self.problems)}


def import_activities(core: Core, path: Path) -> ActivitiesImport:
    saved, problems = domain.import_file(core.engine, core.district, path, now=core.clock())
    return ActivitiesImport(saved, tuple(problems))


@dataclass(frozen=True)
class MonthActivities:
    month: str
    filed: bool
    rows: tuple[dict[str, Any], ...]  # town, then FIELDS

    def to_dict(self) -> dict[str, Any]:
        return {"month": self.month, "filed": self.filed, "rows": list(self.rows)}


def list_activities(core: Core, month: str) -> MonthActivities:
    label = str(Month.parse(month))
    rows = tuple(
        {"town": a.town_id, **{k: getattr(a, k) for k in FIELDS}}
        for a in store.activities_for(core.engine, label).values()
    )
    return MonthActivities(label, store.is_filed(core.engine, label), rows)
