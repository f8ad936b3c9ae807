"""HTTP routes for quota status and the monthly report, thin over the core."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from scheduler.core import Core
from scheduler.exceptions import PingAnError
from scheduler.quotas import load_rules, select_windows, status
from scheduler.reports import _quota_rows, build_monthly_report, write_report


def routes(core: Core) -> list[Route]:
    async def quota(request: Request) -> Response:
        tz = core.settings.tz
        params = request.query_params
        rules = load_rules(core.settings.config_dir, core.district)
        if params.get("rule"):
            rules = [r for r in rules if r.id == params["rule"]]
        label = params.get("week") or params.get("month")
        try:
            day = dt.date.fromisoformat(params["on"]) if params.get("on") else None
        except ValueError:
            return JSONResponse({"error": "on must be YYYY-MM-DD"}, status_code=400)
        if label is None and day is None:
            day = core.clock().astimezone(tz).date()
        pairs = select_windows(rules, day=day, label=label)
        result = status(core.engine, pairs, core.district, now=core.clock(), tz=tz)
        return JSONResponse([r.to_dict() for r in result])

    async def monthly(request: Request) -> Response:
        month = request.query_params.get("month", "")
        try:
            report = build_monthly_report(core, month, request.query_params.get("town"))
        except PingAnError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if request.query_params.get("format") == "xlsx":
            out = Path(tempfile.mkdtemp(prefix="pingan-report-")) / f"月报-{month}.xlsx"
            write_report(report, out)
            return FileResponse(out, filename=out.name)
        return JSONResponse(
            {
                "month": report.month,
                "form": {"header": _form_header(), "rows": report.form, "total": report.total},
                "quotas": _quota_rows(report),
                "delivery": report.delivery,
                "checkback": report.checkback,
            }
        )

    return [
        Route("/api/quota", quota, methods=["GET"]),
        Route("/api/reports/monthly", monthly, methods=["GET"]),
    ]


def _form_header() -> list[str]:
    from scheduler.reports import FORM_HEADER

    return FORM_HEADER
