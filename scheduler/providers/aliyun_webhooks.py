"""Alibaba Cloud's pushes: delivery receipts (SmsReport) and replies (SmsUp), JSON arrays.

The gateway does not sign its pushes, so each request must carry the shared token
(PINGAN_ALIYUN__WEBHOOK_TOKEN) in its query (`?token=…`, part of the push URL configured in the
Alibaba Cloud console) or in an `X-Pingan-Token` header, and, when
PINGAN_ALIYUN__WEBHOOK_ALLOW_IPS is set, come from one of those addresses. Without a token
nothing can be trusted: the routes answer 503 and change nothing. The gateway reads our answer
`{"code": 0, "msg": "成功"}` as received; anything else makes it push again later.

A receipt names the call's OutId and the number, which make the message's provider id
(scheduler.providers.aliyun.provider_id); a reply goes through the reply rules (退订, TD, …).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from scheduler.exceptions import InvalidPhoneNumber
from scheduler.logs import get_logger
from scheduler.phones import normalize
from scheduler.providers.aliyun import STATUS_PATH, provider_id
from scheduler.providers.base import (
    DeliveryStatus,
    ErrorInfo,
    InboundReply,
    ProviderEvents,
    StatusReport,
)
from scheduler.providers.webhook_guard import REFUSALS, push_guard
from scheduler.settings import Settings
from scheduler.web.schemas import Str32, Str64, Str1600

log = get_logger("scheduler.providers.aliyun")
# One push carries at most this many items (the gateway sends a few hundred at most).
MAX_ITEMS = 1000


class AliyunReport(BaseModel):
    """One item of a receipt push; fields this service does not read are ignored."""

    model_config = ConfigDict(extra="ignore")

    phone_number: Str32
    success: bool
    err_code: Str64 = ""
    err_msg: Str1600 = ""
    biz_id: Str64 = ""
    out_id: Str64 = ""
    send_time: Str32 = ""
    report_time: Str32 = ""


class AliyunReply(BaseModel):
    """One item of an SmsUp push: a resident's reply."""

    model_config = ConfigDict(extra="ignore")

    phone_number: Str32
    content: Str1600
    send_time: Str32 = ""
    sign_name: Str64 = ""
    dest_code: Str32 = ""
    sequence_id: int | Str32 = 0


class AliyunAnswer(BaseModel):
    """What the gateway expects back: code 0 means received (else it pushes again)."""

    code: int
    msg: str


Reports = Annotated[list[AliyunReport], Body(max_length=MAX_ITEMS)]
Replies = Annotated[list[AliyunReply], Body(max_length=MAX_ITEMS)]
OK = {"code": 0, "msg": "成功"}


def status_report(item: AliyunReport, errors: dict[str, ErrorInfo]) -> StatusReport | None:
    """The neutral receipt; None for a push without our OutId or with a malformed number."""
    try:
        phone = normalize(item.phone_number)
    except InvalidPhoneNumber:
        return None
    if not item.out_id.isdigit():
        return None
    if item.success:
        return StatusReport(provider_id(item.out_id, phone), DeliveryStatus.DELIVERED, phone=phone)
    code = item.err_code or None
    info = errors.get(code or "")
    return StatusReport(
        provider_id(item.out_id, phone),
        DeliveryStatus.UNDELIVERED,
        code,
        phone=phone,
        opted_out=bool(info and info.opt_out),
    )


def aliyun_router(
    settings: Settings, events: ProviderEvents, errors: dict[str, ErrorInfo]
) -> APIRouter:
    prefix = STATUS_PATH.rsplit("/", 1)[0]
    verify = push_guard(settings.aliyun, setting="PINGAN_ALIYUN__WEBHOOK_TOKEN")

    router = APIRouter(
        prefix=prefix, tags=["webhooks"], responses=REFUSALS, dependencies=[Depends(verify)]
    )

    @router.post(
        "/status",
        response_model=AliyunAnswer,
        summary="Delivery receipts (SmsReport push)",
    )
    async def status(items: Reports) -> Any:
        for item in items:
            report = status_report(item, errors)
            if report is not None:
                await run_in_threadpool(events.status, report)
        return OK

    @router.post(
        "/inbound",
        response_model=AliyunAnswer,
        summary="Residents' replies (SmsUp push); refusal keywords (退订, TD…) record an opt-out",
    )
    async def inbound(items: Replies) -> Any:
        for item in items:
            await run_in_threadpool(events.inbound, InboundReply(item.phone_number, item.content))
        return OK

    return router
