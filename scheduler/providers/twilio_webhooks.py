"""Twilio's webhooks: delivery statuses and replies, signed with the auth token.

Without the secret (PINGAN_TWILIO__AUTH_TOKEN, unset in the dry-run default) nothing can be
verified, so the routes answer 503 and change nothing; a signature is always checked against
the configured public URL (PINGAN_PUBLIC_BASE_URL), the one Twilio signed. Each verified form
is translated into a neutral StatusReport or InboundReply for the engine.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from twilio.request_validator import RequestValidator

from scheduler.logs import get_logger
from scheduler.providers.base import (
    ErrorInfo,
    InboundReply,
    ProviderEvents,
    StatusReport,
    WebhookRefused,
)
from scheduler.providers.twilio import STATUS, STATUS_PATH
from scheduler.settings import Settings
from scheduler.web.errors import field_errors
from scheduler.web.schemas import (
    ErrorOut,
    Str16,
    Str32,
    Str64,
    Str1600,
    ValidationErrorOut,
    WebhookResultOut,
)

log = get_logger("scheduler.providers.twilio")
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
FORM = "application/x-www-form-urlencoded"


class TwilioStatusForm(BaseModel):
    """The fields of a status callback this service reads; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    MessageSid: Str64 = ""
    SmsSid: Str64 = ""
    MessageStatus: Str16 = ""
    SmsStatus: Str16 = ""
    ErrorCode: Str16 = ""
    To: Str32 = ""


class TwilioInboundForm(BaseModel):
    model_config = ConfigDict(extra="ignore")

    From: Str32 = ""
    Body: Str1600 = ""
    MessageSid: Str64 = ""


def status_report(form: TwilioStatusForm, errors: dict[str, ErrorInfo]) -> StatusReport | None:
    """The neutral receipt; None for a callback without a message id or with an unknown status."""
    sid = form.MessageSid or form.SmsSid
    status = STATUS.get((form.MessageStatus or form.SmsStatus).lower())
    if not sid or status is None:
        return None
    code = form.ErrorCode or None
    info = errors.get(code or "")
    return StatusReport(
        sid, status, code, phone=form.To or None, opted_out=bool(info and info.opt_out)
    )


def _form_body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {FORM: {"schema": model.model_json_schema()}},
        }
    }


_REFUSALS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "a missing or wrong X-Twilio-Signature"},
    422: {"model": ValidationErrorOut, "description": "an unreadable body, impossible values"},
    503: {"model": ErrorOut, "description": "no provider secret configured"},
}


def twilio_router(
    settings: Settings, events: ProviderEvents, errors: dict[str, ErrorInfo]
) -> APIRouter:
    secret = settings.twilio.auth_token.get_secret_value()
    validator = RequestValidator(secret) if secret else None
    prefix = STATUS_PATH.rsplit("/", 1)[0]
    router = APIRouter(prefix=prefix, tags=["webhooks"], responses=_REFUSALS)

    async def signed_form(request: Request) -> dict[str, str]:
        if validator is None:
            raise WebhookRefused(
                503, "未配置短信服务商密钥 (PINGAN_TWILIO__AUTH_TOKEN)，不接受回调"
            )
        form = {k: str(v) for k, v in (await request.form()).items()}
        # Behind a TLS-terminating proxy the URL the provider signed is the public one.
        url = settings.public_base_url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        signature = request.headers.get("X-Twilio-Signature", "")
        if not validator.validate(url, form, signature):
            log.warning("webhook.bad_signature", path=request.url.path)
            raise WebhookRefused(403, "签名无效")
        return form

    @router.post(
        "/status",
        response_model=WebhookResultOut,
        openapi_extra=_form_body(TwilioStatusForm),
        summary="Delivery status callback",
    )
    async def status(request: Request) -> Any:
        form = await signed_form(request)
        try:
            parsed = TwilioStatusForm.model_validate(form)
        except ValidationError as exc:
            return JSONResponse({"detail": field_errors(exc.errors())}, status_code=422)
        report = status_report(parsed, errors)
        if report is None:
            return {"result": "ignored"}
        return {"result": await run_in_threadpool(events.status, report)}

    @router.post(
        "/inbound",
        response_class=Response,
        responses={200: {"content": {"application/xml": {"schema": {"type": "string"}}}}},
        openapi_extra=_form_body(TwilioInboundForm),
        summary="A resident's reply; refusal keywords (退订, TD, STOP…) record an opt-out",
    )
    async def inbound(request: Request) -> Response:
        form = await signed_form(request)
        try:
            parsed = TwilioInboundForm.model_validate(form)
        except ValidationError as exc:
            return JSONResponse({"detail": field_errors(exc.errors())}, status_code=422)
        await run_in_threadpool(events.inbound, InboundReply(parsed.From, parsed.Body))
        return Response(EMPTY_TWIML, media_type="application/xml")

    return router
