"""Tencent Cloud SMS pushes: status reports (a JSON array) and replies (上行, one JSON object).

Tencent signs neither, so the callback URLs set in its console carry a shared token
(`?token=…`, PINGAN_TENCENT__WEBHOOK_TOKEN; without one the routes answer 503 and change
nothing) and may be limited to the gateway's addresses (PINGAN_TENCENT__WEBHOOK_ALLOW_IPS).
Each report becomes a neutral StatusReport keyed by its `sid` (the SerialNo SendSms returned),
each reply an InboundReply that goes through the reply rules. Tencent retries a push until it
is answered {"result": 0, "errmsg": "OK"}; applying a report twice changes nothing.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from scheduler.logs import get_logger
from scheduler.providers.base import (
    ErrorInfo,
    InboundReply,
    ProviderEvents,
    StatusReport,
)
from scheduler.providers.tencent import STATUS, STATUS_PATH
from scheduler.providers.webhook_guard import REFUSALS, push_guard
from scheduler.settings import Settings
from scheduler.web.schemas import Str16, Str32, Str64, Str1600

log = get_logger("scheduler.providers.tencent")
DELIVERED = "DELIVRD"


class TencentReport(BaseModel):
    """One status report; fields this service does not read are ignored."""

    model_config = ConfigDict(extra="ignore")

    sid: Str64
    report_status: Str16
    mobile: Str32 = ""
    nationcode: Str16 = ""
    errmsg: Str64 = ""
    description: Str1600 = ""
    user_receive_time: Str32 = ""


class TencentReply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    mobile: Str32
    text: Str1600
    nationcode: Str16 = ""
    sign: Str64 = ""
    extend: Str32 = ""
    time: int | None = None


class TencentAnswer(BaseModel):
    """What Tencent expects back; anything but result 0 makes it push again."""

    result: int = 0
    errmsg: str = "OK"


def status_report(report: TencentReport, errors: dict[str, ErrorInfo]) -> StatusReport | None:
    """The neutral receipt; None for an unknown status."""
    status = STATUS.get(report.report_status.upper())
    if status is None:
        return None
    code = report.errmsg if report.errmsg and report.errmsg != DELIVERED else None
    info = errors.get(code or "")
    return StatusReport(
        report.sid,
        status,
        code,
        phone=report.mobile or None,
        opted_out=bool(info and info.opt_out),
    )


def tencent_router(
    settings: Settings, events: ProviderEvents, errors: dict[str, ErrorInfo]
) -> APIRouter:
    prefix = STATUS_PATH.rsplit("/", 1)[0]
    verified = push_guard(settings.tencent, setting="PINGAN_TENCENT__WEBHOOK_TOKEN")

    router = APIRouter(
        prefix=prefix,
        tags=["webhooks"],
        responses=REFUSALS,
        dependencies=[Depends(verified)],
    )

    @router.post("/status", response_model=TencentAnswer, summary="Status reports (JSON array)")
    async def status(reports: list[TencentReport]) -> TencentAnswer:
        counts: dict[str, int] = {}
        for r in reports:
            report = status_report(r, errors)
            result = "ignored" if report is None else await run_in_threadpool(events.status, report)
            counts[result] = counts.get(result, 0) + 1
        log.info("webhook.tencent_reports", **counts)
        return TencentAnswer()

    @router.post(
        "/reply",
        response_model=TencentAnswer,
        summary="A resident's reply; refusal keywords (退订, TD, STOP…) record an opt-out",
    )
    async def reply(body: TencentReply) -> TencentAnswer:
        await run_in_threadpool(events.inbound, InboundReply(body.mobile, body.text))
        return TencentAnswer()

    return router
