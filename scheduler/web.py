"""The HTTP layer (Starlette on uvicorn): webhooks, operator API, health; thin over the core."""

from __future__ import annotations

import hmac
import threading
from typing import Any

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from scheduler.callbacks import Callbacks
from scheduler.cases import parse_case, record_cases
from scheduler.core import Core
from scheduler.exceptions import InvalidPhoneNumber
from scheduler.logs import get_logger
from scheduler.phones import normalize
from scheduler.store.recipients import record_opt_outs
from scheduler.web_reports import routes as report_routes

log = get_logger("scheduler.web")
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def create_app(core: Core, *, health: Any = None) -> Starlette:
    """The ASGI app; `health` is a callable giving the scheduler's state for /healthz."""
    callbacks = Callbacks(core)
    settings = core.settings
    validator = RequestValidator(settings.twilio.auth_token.get_secret_value())

    async def _signed_form(request: Request) -> dict[str, str] | None:
        form = {k: str(v) for k, v in (await request.form()).items()}
        # Behind a TLS-terminating proxy the URL Twilio signed is the public one, not ours.
        url = settings.public_base_url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        signature = request.headers.get("X-Twilio-Signature", "")
        if not validator.validate(url, form, signature):
            log.warning("webhook.bad_signature", path=request.url.path)
            return None
        return form

    async def status(request: Request) -> Response:
        form = await _signed_form(request)
        if form is None:
            return Response("invalid signature", status_code=403)
        result = callbacks.status(form)
        return JSONResponse({"result": result})

    async def inbound(request: Request) -> Response:
        form = await _signed_form(request)
        if form is None:
            return Response("invalid signature", status_code=403)
        callbacks.inbound(form)
        return Response(EMPTY_TWIML, media_type="application/xml")

    def _authorised(request: Request) -> bool:
        token = settings.api_token.get_secret_value()
        if not token:
            return request.client is not None and request.client.host in ("127.0.0.1", "::1")
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given, token)

    async def opt_outs(request: Request) -> Response:
        if not _authorised(request):
            return JSONResponse({"error": "unauthorised"}, status_code=401)
        data = await request.json()
        phones_raw = data.get("phones") or ([data["phone"]] if data.get("phone") else [])
        valid, invalid = [], []
        for raw in phones_raw:
            try:
                valid.append(normalize(str(raw)))
            except InvalidPhoneNumber as exc:
                invalid.append({"phone": str(raw)[-4:], "reason": str(exc)})
        new = record_opt_outs(
            core.engine, valid, source=str(data.get("source") or "api"), reason=data.get("reason")
        )
        code = 200 if not invalid else 422
        return JSONResponse({"recorded": len(valid), "new": new, "invalid": invalid}, code)

    async def cases(request: Request) -> Response:
        if not _authorised(request):
            return JSONResponse({"error": "unauthorised"}, status_code=401)
        data = await request.json()
        items = data if isinstance(data, list) else [data]
        rows, rejected = [], []
        for i, item in enumerate(items):
            try:
                rows.append(parse_case(core, {k: str(v) for k, v in item.items()}, settings.tz))
            except ValueError as exc:
                rejected.append({"index": i, "reason": str(exc)})
        if rejected:
            return JSONResponse({"rejected": rejected}, status_code=422)
        result = record_cases(core, rows)
        return JSONResponse(
            {"inserted": result.inserted, "unchanged": result.unchanged, "alerts": result.alerts}
        )

    async def healthz(request: Request) -> Response:
        body: dict[str, Any] = {}
        ok = True
        try:
            with core.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            body["database"] = "ok"
        except Exception as exc:
            ok = False
            body["database"] = f"error: {exc.__class__.__name__}"
        body.update(health() if health else {"scheduler": "not running"})
        return JSONResponse(body, status_code=200 if ok else 503)

    routes = [
        Route("/webhooks/twilio/status", status, methods=["POST"]),
        Route("/webhooks/twilio/inbound", inbound, methods=["POST"]),
        Route("/api/opt-outs", opt_outs, methods=["POST"]),
        Route("/api/cases", cases, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        *report_routes(core),
    ]
    return Starlette(routes=routes)


class HttpServer:
    """uvicorn in a background thread of `pingan run`."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        )
        # Started off the main thread, uvicorn leaves signal handling to `pingan run`.
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
