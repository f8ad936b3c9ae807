"""The HTTP layer (FastAPI on uvicorn): webhooks, operator API, health, metrics; thin over the core.

FastAPI because it declares every route with pydantic models (the request checked before a
handler runs, /openapi.json and /docs generated from the same models) on the Starlette and
uvicorn the service already ran. /docs is served offline: its Swagger UI files come from the
fastapi-offline package, not from a CDN.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from scheduler.console import mount_console
from scheduler.core import Core
from scheduler.logs import ensure_logging, get_logger, mask_text
from scheduler.metrics import metrics_registry, render
from scheduler.web.api import api_router
from scheduler.web.auth import ApiGuard, ApiRefusal
from scheduler.web.errors import field_errors
from scheduler.web.schemas import HealthOut
from scheduler.web.webhooks import Refused, provider_routers

log = get_logger("scheduler.web")

Health = Callable[[], dict[str, Any]]
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def role_of(state: dict[str, Any]) -> str:
    """`leader` for the node holding the scheduler lock, `standby` for any other."""
    return "leader" if state.get("scheduler") == "active" else "standby"


def create_app(core: Core, *, health: Health | None = None) -> FastAPI:
    """The ASGI app; `health` gives the service's state for /healthz and /metrics."""

    def state() -> dict[str, Any]:
        return health() if health is not None else {"scheduler": "not running"}

    app = FastAPIOffline(
        title="pingan-broadcast",
        summary="平安宣传短信：回调、运营接口、健康检查与指标",
        version="1",
        redoc_url=None,
    )
    for router in provider_routers(core):
        app.include_router(router)
    app.include_router(api_router(core, ApiGuard(core.settings)))
    registry = metrics_registry(
        lambda: core.engine,
        is_leader=lambda: role_of(state()) == "leader",
        clock=lambda: core.clock(),
    )

    @app.get(
        "/healthz",
        response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "the database does not answer"}},
        summary="Liveness and role: 200 for a leader and a standby, 503 without a database",
    )
    def healthz() -> Any:
        body: dict[str, Any] = {}
        ok = True
        try:
            with core.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            body["database"] = "ok"
        except Exception as exc:
            ok = False
            body["database"] = f"error: {exc.__class__.__name__}"
        current = state()
        body["role"] = role_of(current)
        body.update(current)
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        summary="Prometheus metrics, counted from the database at scrape time",
    )
    def metrics() -> Response:
        return Response(render(registry), media_type=PROMETHEUS)

    _add_error_handlers(app)
    # The office staff's pages (login, 总览, …) under /, outside the OpenAPI schema.
    mount_console(app, core)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def refused(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiRefusal | Refused)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=headers)

    async def invalid(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": field_errors(exc.errors())}, status_code=422)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:
            # A body that cannot be parsed at all (bytes that are not UTF-8, a broken form) is
            # a malformed request like any other: 422 naming the body.
            detail = [{"loc": ["body"], "msg": str(exc.detail), "type": "body_unreadable"}]
            return JSONResponse({"detail": detail}, status_code=422)
        return JSONResponse(
            {"error": mask_text(str(exc.detail))},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def internal(request: Request, exc: Exception) -> Response:
        # The traceback goes through the masked log chain; the client learns nothing of it.
        log.error("http.internal_error", path=request.url.path, exc_info=exc)
        return JSONResponse({"error": "内部错误，已记录日志"}, status_code=500)

    app.add_exception_handler(ApiRefusal, refused)
    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal)


class HttpServer:
    """uvicorn in a background thread of `pingan run`, its logs through the masked chain."""

    def __init__(self, app: FastAPI, host: str, port: int, *, log_level: str = "info") -> None:
        import uvicorn

        ensure_logging()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,
                log_level=log_level.lower(),
                lifespan="off",
            )
        )
        # Started off the main thread, uvicorn leaves signal handling to `pingan run`.
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        """False once uvicorn gave up, e.g. on a port another process holds."""
        return self.thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
