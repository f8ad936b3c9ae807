"""The console's pages: login, 总览, 操作记录, and the sections still being built.

Handlers parse the request, call a use case in `scheduler.accounts` (later the other use-case
modules) and render a template; they never query the database themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from scheduler import accounts
from scheduler.accounts import Account, LoginOutcome
from scheduler.console import filters
from scheduler.console.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    CsrfFailed,
    Forbidden,
    LoginRequired,
    csrf_token,
    peer,
    requires,
    safe_next,
    session_user,
    start_session,
    verify_csrf,
)
from scheduler.core import Core
from scheduler.exceptions import PingAnError, UnknownName
from scheduler.models import Role
from scheduler.services.console import ConsoleError, NotYourTown

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Section:
    key: str
    path: str
    title: str
    role: Role = Role.VIEWER
    district_only: bool = False
    # What the section will hold, shown while it is being built.
    coming: str = ""


SECTIONS: tuple[Section, ...] = (
    Section("overview", "/", "总览"),
    Section("occurrences", "/occurrences", "发送批次"),
    Section("templates", "/templates", "模板"),
    Section("recipients", "/recipients", "居民名单"),
    Section("cases", "/cases", "案件"),
    Section("reports", "/reports", "报表"),
    Section("delivery", "/delivery", "投递"),
    Section("audit", "/audit", "操作记录", role=Role.APPROVER, district_only=True),
)

ACTION_LABELS = {
    "user.add": "添加用户",
    "user.disable": "停用用户",
    "user.password": "修改密码",
    "user.login": "登录",
    "user.logout": "退出登录",
    "occurrence.pause": "暂停发送批次",
    "occurrence.resume": "恢复发送批次",
    "occurrence.retry": "重试发送批次",
    "template.edit": "编辑模板",
    "template.approve": "审核模板",
    "recipients.import": "上传居民名单",
    "recipients.opt_out": "登记退订",
    "cases.import": "导入案件",
    "cases.add": "登记案件",
    "activities.save": "填写宣传活动",
}


def make_environment(core: Core) -> Environment:
    tz = core.settings.tz
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["zh_date"] = lambda v: filters.zh_date(v, tz)
    env.filters["zh_datetime"] = lambda v: filters.zh_datetime(v, tz)
    env.filters["zh_week"] = lambda v: filters.zh_week(v, tz)
    env.globals.update(csrf_field=CSRF_FIELD, csrf_header=CSRF_HEADER, action_labels=ACTION_LABELS)
    return env


class Pages:
    """Renders templates with what every page shares: the user, the navigation, the token."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.env = make_environment(core)

    def nav(self, account: Account | None) -> list[Section]:
        if account is None:
            return []
        return [
            s
            for s in SECTIONS
            if account.allows(s.role) and not (s.district_only and account.town_id)
        ]

    def render(
        self,
        request: Request,
        name: str,
        *,
        account: Account | None = None,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        html = self.env.get_template(name).render(
            user=account,
            nav=self.nav(account),
            current=context.pop("current", ""),
            csrf_token=csrf_token(request),
            today=self.core.clock().astimezone(self.core.settings.tz).date(),
            **context,
        )
        response = HTMLResponse(html, status_code=status_code, headers=headers)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response


def build_router(core: Core, pages: Pages) -> APIRouter:
    """Every route checks the CSRF token of unsafe methods through the router's dependency."""
    router = APIRouter(dependencies=[Depends(verify_csrf)], include_in_schema=False)

    @router.get("/login", response_model=None)
    def login_form(request: Request, next: str = "/") -> Response:
        if session_user(core, request) is not None:
            return RedirectResponse(safe_next(next), status_code=303)
        return pages.render(request, "login.html", next=safe_next(next))

    @router.post("/login", response_model=None)
    async def login(
        request: Request,
        username: str = Form(""),
        password: str = Form(""),
        next: str = Form("/"),
    ) -> Response:
        result = await run_in_threadpool(
            accounts.authenticate, core, username, password, peer=peer(request)
        )
        if result.outcome == LoginOutcome.OK and result.account is not None:
            start_session(request, result.account)
            return RedirectResponse(safe_next(next), status_code=303)
        if result.outcome == LoginOutcome.THROTTLED:
            minutes = max(1, -(-result.retry_after_seconds // 60))
            error, status = f"登录失败次数过多，请{minutes}分钟后再试。", 429
            headers = {"Retry-After": str(result.retry_after_seconds)}
        elif result.outcome == LoginOutcome.DISABLED:
            error, status, headers = "该账号已停用，请联系管理员。", 403, {}
        else:
            error, status, headers = "用户名或密码错误。", 401, {}
        return pages.render(
            request,
            "login.html",
            status_code=status,
            headers=headers,
            error=error,
            username=username,
            next=safe_next(next),
        )

    @router.post("/logout", response_model=None)
    def logout(request: Request) -> Response:
        account = session_user(core, request)
        if account is not None:
            accounts.record_audit(
                core, account.name, "user.logout", account.name, peer=peer(request)
            )
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    from scheduler.console.sections import add_section_routes

    add_section_routes(router, core, pages)

    audit_section = next(s for s in SECTIONS if s.key == "audit")
    can_audit = requires(core, audit_section.role, district_only=True)

    @router.get("/audit", response_model=None)
    def audit(request: Request, page: int = 1, account: Account = Depends(can_audit)) -> Response:
        page = max(1, page)
        size = 100
        entries = accounts.audit_entries(core, limit=size + 1, offset=(page - 1) * size)
        return pages.render(
            request,
            "audit.html",
            account=account,
            current="audit",
            entries=entries[:size],
            page=page,
            has_next=len(entries) > size,
        )

    return router


def _chinese(exc: Exception) -> str:
    """A domain error's message for the page: ours are Chinese already; others are named."""
    text = str(exc)
    if isinstance(exc, ConsoleError):
        return text
    if isinstance(exc, UnknownName):
        return f"找不到该对象：{text}"
    return f"操作未完成：{text}"


def install_error_pages(app: FastAPI, core: Core, pages: Pages) -> None:
    """Login redirects and Chinese 403 pages for the console's own exceptions."""

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        back = quote(exc.next_path, safe="/")
        target = "/login" if exc.next_path == "/" else f"/login?next={back}"
        return RedirectResponse(target, status_code=303)

    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Forbidden)
        account = (
            None
            if isinstance(exc, CsrfFailed)
            else await run_in_threadpool(session_user, core, request)
        )
        return pages.render(
            request,
            "error.html",
            account=account,
            status_code=403,
            title="无法完成操作" if isinstance(exc, CsrfFailed) else "没有权限",
            message=exc.message,
        )

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PingAnError)
        account = await run_in_threadpool(session_user, core, request)
        status = 400
        if isinstance(exc, NotYourTown):
            status = 403
        elif isinstance(exc, UnknownName):
            status = 404
        return pages.render(
            request,
            "error.html",
            account=account,
            status_code=status,
            title="没有权限" if status == 403 else "无法完成操作",
            message=_chinese(exc),
        )

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(PingAnError, refused)
    app.add_exception_handler(Forbidden, forbidden)
