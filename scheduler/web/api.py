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

from scheduler.core import Core
from scheduler.phones import mask
from scheduler.services import audit as audit_service
from scheduler.services import cases as cases_service
from scheduler.services import recipients as recipients_service
from scheduler.services import sends as sends_service
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
    """Every /api route, behind `guard` (tests/integration/test_web_api.py walks the app
    to prove it)."""
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
        result = recipients_service.opt_out(
            core,
            ((f"phones[{i}]", value) for i, value in enumerate(raw)),
            source=body.source,
            reason=body.reason,
            actor=caller,
        )
        invalid = [{"phone": mask(r.value), "reason": r.reason} for r in result.rejected]
        out = {"recorded": len(result.accepted), "new": result.new, "invalid": invalid}
        return JSONResponse(out, status_code=422 if invalid else 200)

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
        result = cases_service.record_cases(core, [it.as_row() for it in items], actor=caller)
        return JSONResponse(result.to_dict(), status_code=422 if result.rejected else 200)

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
        rows = ((f"row {i}", it.as_row()) for i, it in enumerate(items))
        result = sends_service.record_sends(core, rows, actor=caller)
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
            e.to_dict()
            for e in audit_service.audit_entries(core, limit=limit, who=who, action=action)
        ]

    add_report_routes(api, core)
    return api
