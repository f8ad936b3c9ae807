"""Mounting the console into the service's FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.sessions import SessionMiddleware
from starlette.staticfiles import StaticFiles

from scheduler.console.pages import STATIC, Pages, build_router, install_error_pages
from scheduler.console.security import SESSION_COOKIE, console_secret
from scheduler.core import Core


def mount_console(app: FastAPI, core: Core) -> None:
    """Add the console to `app`: session middleware, /static/ and the pages under /.

    Call it while building the app, before it serves (Starlette refuses middleware later).
    """
    settings = core.settings.console
    app.add_middleware(
        SessionMiddleware,
        secret_key=console_secret(core.settings),
        session_cookie=SESSION_COOKIE,
        max_age=int(settings.session_hours * 3600),
        same_site="lax",
        https_only=settings.cookie_secure,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="console-static")
    pages = Pages(core)
    install_error_pages(app, core, pages)
    app.include_router(build_router(core, pages))
