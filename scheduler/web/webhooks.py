"""The provider's webhooks (Twilio): delivery statuses and replies, signed.

Without a provider secret (PINGAN_TWILIO__AUTH_TOKEN, unset in the dry-run default) nothing
can be verified, so the routes answer 503 and change nothing; a signature is always checked
against the configured public URL (PINGAN_PUBLIC_BASE_URL), the one the provider signed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from twilio.request_validator import RequestValidator

from scheduler.callbacks import Callbacks
from scheduler.core import Core
from scheduler.logs import get_logger
from scheduler.web.errors import field_errors
from scheduler.web.schemas import (
    ErrorOut,
    TwilioInboundForm,
    TwilioStatusForm,
    ValidationErrorOut,
    WebhookResultOut,
)

log = get_logger("scheduler.web")
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
FORM = "application/x-www-form-urlencoded"


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


class Refused(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def webhook_router(core: Core) -> APIRouter:
    callbacks = Callbacks(core)
    settings = core.settings
    secret = settings.twilio.auth_token.get_secret_value()
    validator = RequestValidator(secret) if secret else None
    router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"], responses=_REFUSALS)

    async def signed_form(request: Request) -> dict[str, str]:
        if validator is None:
            raise Refused(503, "未配置短信服务商密钥 (PINGAN_TWILIO__AUTH_TOKEN)，不接受回调")
        form = {k: str(v) for k, v in (await request.form()).items()}
        # Behind a TLS-terminating proxy the URL the provider signed is the public one.
        url = settings.public_base_url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        signature = request.headers.get("X-Twilio-Signature", "")
        if not validator.validate(url, form, signature):
            log.warning("webhook.bad_signature", path=request.url.path)
            raise Refused(403, "签名无效")
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
            TwilioStatusForm.model_validate(form)
        except ValidationError as exc:
            return JSONResponse({"detail": field_errors(exc.errors())}, status_code=422)
        return {"result": await run_in_threadpool(callbacks.status, form)}

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
            TwilioInboundForm.model_validate(form)
        except ValidationError as exc:
            return JSONResponse({"detail": field_errors(exc.errors())}, status_code=422)
        await run_in_threadpool(callbacks.inbound, form)
        return Response(EMPTY_TWIML, media_type="application/xml")

    return router
