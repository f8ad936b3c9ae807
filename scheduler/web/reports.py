"""HTTP routes for quota status and the monthly report, thin over the services.

They are added to the guarded /api router (scheduler.web.api), never to the app itself. The
xlsx report is built in a temporary folder removed before the response leaves (the report
writer takes a path); nothing outlives the request.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import Response

from scheduler.core import Core
from scheduler.exceptions import PingAnError, UnknownName
from scheduler.services.quotas import InvalidWindow, quota_status
from scheduler.services.reports import build_report, report_json, report_xlsx
from scheduler.web.errors import unprocessable
from scheduler.web.schemas import MonthlyReportOut, QuotaStatusOut, ValidationErrorOut

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MONTH = r"^20\d{2}-(0[1-9]|1[0-2])$"
LABEL = r"^20\d{2}-(W(0[1-9]|[1-4]\d|5[0-3])|0[1-9]|1[0-2])$"


def _plausible_day(day: dt.date | None) -> dt.date | None:
    if day is not None and not 2000 <= day.year <= 2100:
        raise ValueError("the year must be between 2000 and 2100")
    return day


def add_report_routes(api: APIRouter, core: Core) -> None:
    @api.get(
        "/quota",
        response_model=list[QuotaStatusOut],
        responses={422: {"model": ValidationErrorOut}},
        summary="Quota attainment (配额完成情况) for a window or a day",
    )
    def quota(
        rule: Annotated[str | None, Query(max_length=64, description="one rule id")] = None,
        week: Annotated[str | None, Query(pattern=LABEL, description="e.g. 2022-W41")] = None,
        month: Annotated[str | None, Query(pattern=LABEL, description="e.g. 2022-10")] = None,
        on: Annotated[dt.date | None, Query(description="the windows containing this day")] = None,
    ) -> Any:
        try:
            day = _plausible_day(on)
        except ValueError as exc:
            return unprocessable(["query", "on"], str(exc))
        try:
            report = quota_status(core, rule, week or month, day)
        except (UnknownName, InvalidWindow):  # no such rule or week (2022-W53): no rows
            return []
        return report.rules_json()

    @api.get(
        "/reports/monthly",
        response_model=MonthlyReportOut,
        responses={
            200: {"content": {XLSX: {"schema": {"type": "string", "format": "binary"}}}},
            422: {"model": ValidationErrorOut},
        },
        summary="The monthly report (平安宣传活动情况表), JSON or xlsx",
    )
    def monthly(
        month: Annotated[str, Query(pattern=MONTH, description="YYYY-MM")],
        town: Annotated[str | None, Query(max_length=64, description="one town")] = None,
        format: Annotated[Literal["json", "xlsx"], Query()] = "json",
    ) -> Any:
        try:
            report = build_report(core, month, town)
        except PingAnError as exc:
            return unprocessable(["query", "town" if town else "month"], str(exc))
        if format == "xlsx":
            name = f"月报-{report.month}.xlsx"
            return Response(
                report_xlsx(report),
                media_type=XLSX,
                headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"},
            )
        return report_json(report)
