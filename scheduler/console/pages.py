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
from scheduler.models import Role

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
    Section(
        "occurrences",
        "/occurrences",
        "发送批次",
        coming="每次发送的活动、时间、状态，排队/已发/送达/失败数与排除原因；操作员可暂停、恢复、重试。",
    ),
    Section(
        "templates",
        "/templates",
        "模板",
        coming="短信和信件模板的列表、按镇和人群预览（字数与计费条数）、在线编辑、与已审核版本对比、审核。",
    ),
    Section(
        "recipients",
        "/recipients",
        "居民名单",
        coming="按镇、村、运营商、人群统计；上传名单（含进度和拒收行下载）；登记退订号码。",
    ),
    Section(
        "cases",
        "/cases",
        "案件",
        coming="导入或登记案件，查看触发的“三必讲”提醒和每个案件的倒查情况。",
    ),
    Section(
        "reports",
        "/reports",
        "报表",
        coming="按月、按单位查看月报并下载 xlsx；按镇、按月填写宣传活动（走访住户、横幅等）。",
    ),
    Section(
        "delivery",
        "/delivery",
        "投递",
        coming="按天的投递图表，主要错误码及其中文含义。",
    ),
    Section("audit", "/audit", "操作记录", role=Role.APPROVER, district_only=True),
)

ACTION_LABELS = {
    "user.add": "添加用户",
    "user.disable": "停用用户",
    "user.password": "修改密码",
    "user.login": "登录",
    "user.logout": "退出登录",
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
    viewer = requires(core, Role.VIEWER)

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

    @router.get("/", response_model=None)
    def overview(request: Request, account: Account = Depends(viewer)) -> Response:
        return pages.render(request, "overview.html", account=account, current="overview")

    for section in SECTIONS:
        if section.key in ("overview", "audit"):
            continue
        router.add_api_route(
            section.path,
            _placeholder(pages, section, requires(core, section.role)),
            methods=["GET"],
            response_model=None,
            name=f"console.{section.key}",
        )

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


def _placeholder(pages: Pages, section: Section, dependency: Any) -> Any:
    def handler(request: Request, account: Account = Depends(dependency)) -> Response:
        return pages.render(
            request, "placeholder.html", account=account, current=section.key, section=section
        )

    return handler


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

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(Forbidden, forbidden)
