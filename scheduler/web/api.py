"""The operator API under /api: one router, one guard on it, so no route can go unguarded.

Every change (opt-outs, cases) is written to the audit log with the caller's token name and
peer address. Handlers are plain functions: FastAPI runs them in its thread pool, off the
event loop, since the store is blocking SQLAlchemy.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, and
# they name the guard, a local of api_router.
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import Field

from scheduler.cases import parse_case, record_cases
from scheduler.core import Core
from scheduler.exceptions import InvalidPhoneNumber
from scheduler.phones import mask, normalize
from scheduler.sends import record_sends
from scheduler.store import audit
from scheduler.store.recipients import record_opt_outs
from scheduler.web.auth import ApiGuard, Caller
from scheduler.web.reports import add_report_routes
from scheduler.web.schemas import (
    AuditEntryOut,
    CaseIn,
    CasesOut,
    CasesRejectedOut,
    ErrorOut,
    OptOutIn,
    OptOutOut,
    SendIn,
    SendsOut,
    ValidationErrorOut,
)

MAX_CASES = 1000


def api_router(core: Core, guard: ApiGuard) -> APIRouter:
    """Every /api route, behind `guard` (tests/test_web_api.py walks the app to prove it)."""
    api = APIRouter(
        prefix="/api",
        dependencies=[Depends(guard)],
        responses={
            401: {"model": ErrorOut, "description": "no or a wrong bearer token"},
            403: {"model": ErrorOut, "description": "refused without a token configured"},
        },
    )
    CallerDep = Annotated[Caller, Depends(guard)]

    @api.post(
        "/opt-outs",
        response_model=OptOutOut,
        responses={422: {"model": OptOutOut | ValidationErrorOut}},
        summary="Record refusals (退订) by phone number",
    )
    def opt_outs(body: OptOutIn, caller: CallerDep) -> Any:
        raw = [*body.phones, *([body.phone] if body.phone else [])]
        valid: list[str] = []
        invalid: list[dict[str, str]] = []
        for value in raw:
            try:
                valid.append(normalize(value))
            except InvalidPhoneNumber as exc:
                invalid.append({"phone": value[-4:], "reason": str(exc)})
        new = record_opt_outs(
            core.engine, valid, source=body.source, reason=body.reason, now=core.clock()
        )
        if valid:
            audit.record(
                core.engine,
                who=caller.name,
                action="opt-outs",
                peer=caller.peer,
                detail={"phones": sorted(set(valid)), "new": new, "source": body.source},
                at=core.clock(),
            )
        result = {"recorded": len(valid), "new": new, "invalid": invalid}
        return JSONResponse(result, status_code=422 if invalid else 200)

    @api.post(
        "/cases",
        response_model=CasesOut,
        responses={422: {"model": CasesRejectedOut | ValidationErrorOut}},
        summary="Record fraud cases (案件); villages crossing a must-reach rule get an alert",
    )
    def cases(
        body: Annotated[CaseIn | Annotated[list[CaseIn], Field(max_length=MAX_CASES)], Body()],
        caller: CallerDep,
    ) -> Any:
        items = body if isinstance(body, list) else [body]
        tz = core.settings.tz
        rows, rejected = [], []
        for i, item in enumerate(items):
            try:
                rows.append(parse_case(core, item.as_row(), tz))
            except (ValueError, OverflowError) as exc:
                rejected.append({"index": i, "reason": str(exc)})
        if rejected:
            return JSONResponse({"rejected": rejected}, status_code=422)
        result = record_cases(core, rows)
        if rows:
            audit.record(
                core.engine,
                who=caller.name,
                action="cases",
                peer=caller.peer,
                detail={
                    "case_ids": [r["case_id"] for r in rows],
                    "inserted": result.inserted,
                    "alerts": len(result.alerts),
                },
                at=core.clock(),
            )
        return {"inserted": result.inserted, "unchanged": result.unchanged, "alerts": result.alerts}

    @api.post(
        "/sends",
        response_model=SendsOut,
        responses={422: {"model": SendsOut | ValidationErrorOut}},
        summary="Record sends carriers and towns report for their own channels (上报发送量)",
    )
    def sends(
        body: Annotated[SendIn | Annotated[list[SendIn], Field(max_length=MAX_CASES)], Body()],
        caller: CallerDep,
    ) -> Any:
        items = body if isinstance(body, list) else [body]
        result = record_sends(core, ((f"row {i}", it.as_row()) for i, it in enumerate(items)))
        if result.inserted or result.updated:
            audit.record(
                core.engine,
                who=caller.name,
                action="sends",
                peer=caller.peer,
                detail={"inserted": result.inserted, "updated": result.updated},
                at=core.clock(),
            )
        return JSONResponse(result.to_dict(), status_code=422 if result.rejected else 200)

    @api.get(
        "/audit",
        response_model=list[AuditEntryOut],
        responses={422: {"model": ValidationErrorOut}},
        summary="The audit log, latest first (numbers masked)",
    )
    def audit_log(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        who: Annotated[str | None, Query(max_length=64)] = None,
        action: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Any:
        return [
            {**e.__dict__, "detail": _masked(e.detail)}
            for e in audit.entries(core.engine, limit=limit, who=who, action=action)
        ]

    add_report_routes(api, core)
    return api


def _masked(detail: dict[str, Any]) -> dict[str, Any]:
    phones = detail.get("phones")
    if isinstance(phones, list):
        return {**detail, "phones": [mask(str(p)) for p in phones]}
    return detail
