"""Monthly report use cases: build it, write it (and file it), hand it over as JSON or xlsx."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler import reports as domain
from scheduler.core import Core
from scheduler.periods import Month
from scheduler.store import activities as activity_store


def build_report(core: Core, month: str | Month, town: str | None = None) -> domain.MonthlyReport:
    """The month's report for the district, or one town's own form (UnknownName if none)."""
    return domain.build_monthly_report(core, str(Month.parse(str(month))), town)


def report_json(report: domain.MonthlyReport) -> dict[str, Any]:
    """The report as GET /api/reports/monthly returns it."""
    return {
        "month": report.month,
        "form": {"header": domain.FORM_HEADER, "rows": report.form, "total": report.total},
        "quotas": domain.quota_rows(report),
        "delivery": report.delivery,
        "checkback": report.checkback,
    }


def report_xlsx(report: domain.MonthlyReport) -> bytes:
    """The xlsx workbook's bytes; the file it is written to is gone when this returns."""
    with tempfile.TemporaryDirectory(prefix="pingan-report-") as folder:
        return domain.write_report(report, Path(folder) / f"月报-{report.month}.xlsx").read_bytes()


@dataclass(frozen=True)
class WrittenReport:
    path: Path
    filed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "filed": self.filed}


def write_monthly_report(
    core: Core, month: str | Month, out: Path, *, town: str | None = None, file_it: bool = False
) -> WrittenReport:
    """Write the report in the format `out`'s suffix names; filing makes the month's
    activities read-only."""
    report = build_report(core, month, town)
    path = domain.write_report(report, out)
    if file_it:
        activity_store.mark_filed(core.engine, report.month, str(path), now=core.clock())
    return WrittenReport(path, file_it)
