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

import hmac
import ipaddress
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
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
    WebhookRefused,
)
from scheduler.settings import Settings
from scheduler.web.schemas import ErrorOut, Str32, Str64, Str1600, ValidationErrorOut

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

_REFUSALS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "a missing or wrong token, or a refused address"},
    422: {"model": ValidationErrorOut, "description": "not a JSON array of pushes"},
    503: {"model": ErrorOut, "description": "no webhook token configured"},
}


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
    cfg = settings.aliyun
    token = cfg.webhook_token.get_secret_value()
    allowed = [ipaddress.ip_network(n, strict=False) for n in cfg.webhook_allow_ips]
    prefix = STATUS_PATH.rsplit("/", 1)[0]

    def verify(request: Request) -> None:
        """Run before the body is read: an untrusted push is refused whatever it holds."""
        if not token:
            raise WebhookRefused(
                503, "未配置阿里云回执令牌 (PINGAN_ALIYUN__WEBHOOK_TOKEN)，不接受推送"
            )
        peer = request.client.host if request.client else ""
        if allowed:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                address = None
            if address is None or not any(address in net for net in allowed):
                log.warning("webhook.refused_address", path=request.url.path)
                raise WebhookRefused(403, "来源地址不在允许列表中")
        given = request.query_params.get("token") or request.headers.get("X-Pingan-Token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            log.warning("webhook.bad_token", path=request.url.path)
            raise WebhookRefused(403, "令牌无效")

    router = APIRouter(
        prefix=prefix, tags=["webhooks"], responses=_REFUSALS, dependencies=[Depends(verify)]
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
