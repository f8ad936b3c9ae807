"""The console's security over plain HTTP, on uvicorn: sessions, CSRF, roles, login throttle."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import SecretStr

from scheduler import accounts
from scheduler.accounts import Account
from scheduler.console.pages import SECTIONS, STATIC
from scheduler.console.security import (
    SECRET_FILE,
    SESSION_COOKIE,
    Forbidden,
    check_town,
    console_secret,
    safe_next,
)
from scheduler.core import Core
from scheduler.models import Role
from scheduler.settings import ConsoleSettings, Settings
from tests.console_server import Console, serve_console

PASSWORD = "correct-horse-9"
CSRF_REFUSED = "CSRF 校验失败"


@pytest.fixture
def console(settings: Settings) -> Iterator[Console]:
    with serve_console(settings) as c:
        yield c


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def login(
    client: httpx.Client, name: str, password: str = PASSWORD, next_: str = "/"
) -> httpx.Response:
    token = csrf_of(client.get("/login").text)
    return client.post(
        "/login",
        data={"csrf_token": token, "username": name, "password": password, "next": next_},
    )


def add_user(console: Console, name: str, role: Role, town: str | None = None) -> Account:
    return accounts.create_user(console.core, name, role, PASSWORD, town=town, actor="test")


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)  # FastAPI >= 0.13x keeps included
        if inner is not None:  # routers whole instead of copying their routes
            yield from _api_routes(inner.routes)


def post_routes(console: Console) -> list[str]:
    """Every POST the app declares, so a form added later is covered too."""
    paths = [r.path for r in _api_routes(console.app.routes) if "POST" in (r.methods or set())]
    assert {"/login", "/logout"} <= set(paths)
    return paths


def test_every_page_sends_an_anonymous_visitor_to_the_login(console: Console) -> None:
    with console.client() as client:
        for section in SECTIONS:
            response = client.get(section.path)
            assert response.status_code == 303, section.path
            expected = "/login" if section.path == "/" else f"/login?next={section.path}"
            assert response.headers["location"] == expected
        login_page = client.get("/login")
        assert login_page.status_code == 200
        assert "<h1>登录</h1>" in login_page.text
        assert 'lang="zh-CN"' in login_page.text


def test_every_post_refuses_a_missing_or_wrong_csrf_token(console: Console) -> None:
    add_user(console, "wang", Role.ADMIN)
    with console.client() as anonymous:
        anonymous.get("/login")  # a session with a token exists; the POSTs below lack it
        for path in post_routes(console):
            missing = anonymous.post(path, data={"username": "wang", "password": PASSWORD})
            wrong = anonymous.post(path, data={"csrf_token": "forged", "username": "wang"})
            for response in (missing, wrong):
                assert response.status_code == 403, path
                assert CSRF_REFUSED in response.text
    with console.client() as client:
        assert login(client, "wang").status_code == 303
        for path in post_routes(console):
            response = client.post(path, data={"csrf_token": "forged"})
            assert response.status_code == 403, path
            assert CSRF_REFUSED in response.text
        # Still logged in: the forged logout did nothing.
        assert client.get("/").status_code == 200
    with console.client() as fresh:
        # No session at all, so no token to match, even an empty one.
        response = fresh.post("/login", data={"csrf_token": "", "username": "wang"})
        assert response.status_code == 403


def test_htmx_requests_carry_the_token_in_a_header(console: Console) -> None:
    add_user(console, "wang", Role.VIEWER)
    with console.client() as client:
        login(client, "wang")
        token = csrf_of(client.get("/").text)
        assert client.post("/logout", headers={"X-CSRF-Token": token}).status_code == 303
        assert client.get("/").headers["location"] == "/login"


def test_login_sets_a_signed_httponly_samesite_cookie_that_expires(console: Console) -> None:
    add_user(console, "wang", Role.VIEWER)
    with console.client() as client:
        before = csrf_of(client.get("/login").text)
        response = login(client, "wang", next_="/templates")
        assert response.status_code == 303
        assert response.headers["location"] == "/templates"
        cookie = response.headers["set-cookie"].lower()
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert f"max-age={8 * 3600}" in cookie
        page = client.get("/")
        assert page.status_code == 200
        assert "欢迎，wang" in page.text
        # A fresh token after login: one seen before it is worthless.
        assert csrf_of(page.text) != before


def test_a_tampered_cookie_is_anonymous(console: Console) -> None:
    add_user(console, "wang", Role.ADMIN)
    with console.client() as client:
        login(client, "wang")
        value = client.cookies[SESSION_COOKIE]
        client.cookies.set(SESSION_COOKIE, value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))
        assert client.get("/").status_code == 303


def test_the_session_ends_when_it_expires(settings: Settings) -> None:
    short = settings.model_copy(update={"console": ConsoleSettings(session_hours=2 / 3600)})
    with serve_console(short) as console, console.client() as client:
        add_user(console, "wang", Role.VIEWER)
        login(client, "wang")
        assert client.get("/").status_code == 200
        time.sleep(3.2)
        assert client.get("/").headers["location"] == "/login"


def test_disabling_or_a_new_password_ends_open_sessions(console: Console) -> None:
    add_user(console, "wang", Role.OPERATOR)
    add_user(console, "li", Role.OPERATOR)
    with console.client() as wang, console.client() as li:
        login(wang, "wang")
        login(li, "li")
        accounts.disable_user(console.core, "wang")
        accounts.set_password(console.core, "li", "another-secret-1")
        assert wang.get("/").headers["location"] == "/login"
        assert li.get("/").headers["location"] == "/login"
        refused = login(wang, "wang")
        assert refused.status_code == 403 and "该账号已停用" in refused.text
        assert login(li, "li", "another-secret-1").status_code == 303


def test_wrong_password_is_refused_in_chinese(console: Console) -> None:
    add_user(console, "wang", Role.VIEWER)
    with console.client() as client:
        for name, password in (("wang", "not-the-password"), ("nobody", PASSWORD)):
            response = login(client, name, password)
            assert response.status_code == 401
            assert "用户名或密码错误。" in response.text
            assert SESSION_COOKIE in client.cookies  # the anonymous session, no user in it
            assert client.get("/").status_code == 303


def test_login_is_throttled_across_processes(settings: Settings) -> None:
    """Five failures through one server; another server on the same database refuses too."""
    with serve_console(settings) as first, first.client() as client:
        add_user(first, "wang", Role.VIEWER)
        for _ in range(5):
            assert login(client, "wang", "guess-guess").status_code == 401
        locked = login(client, "wang", PASSWORD)
        assert locked.status_code == 429
        assert "登录失败次数过多，请15分钟后再试。" in locked.text
        assert 0 < int(locked.headers["retry-after"]) <= 15 * 60 + 1
    with serve_console(settings) as second, second.client() as client:
        locked = login(client, "wang", PASSWORD)
        assert locked.status_code == 429
        assert "登录失败次数过多" in locked.text


def test_a_role_too_low_is_refused(console: Console) -> None:
    add_user(console, "viewer", Role.VIEWER)
    add_user(console, "town-approver", Role.APPROVER, town="huanghu")
    add_user(console, "approver", Role.APPROVER)
    with console.client() as client:
        login(client, "viewer")
        page = client.get("/audit")
        assert page.status_code == 403
        assert "此操作需要审核员或更高权限，您当前是查看员。" in page.text
        assert 'href="/audit"' not in client.get("/").text
    with console.client() as client:
        login(client, "town-approver")
        page = client.get("/audit")
        assert page.status_code == 403 and "仅对区级账号开放" in page.text
        overview = client.get("/")
        assert "黄湖镇" in overview.text and 'href="/audit"' not in overview.text
    with console.client() as client:
        login(client, "approver")
        page = client.get("/audit")
        assert page.status_code == 200
        assert "添加用户" in page.text and "登录" in page.text


def test_every_section_renders_for_a_viewer(console: Console) -> None:
    add_user(console, "viewer", Role.VIEWER, town="baiguan")
    with console.client() as client:
        login(client, "viewer")
        for section in SECTIONS:
            if section.district_only:
                continue
            page = client.get(section.path)
            assert page.status_code == 200, section.path
            assert f"<h1>{section.title}</h1>" in page.text
            assert "功能建设中" not in page.text
            # A viewer gets the filters (GET forms), never a form that changes anything.
            body = page.text.split("</header>", 1)[1]
            assert 'method="post"' not in body and "hx-post" not in body
            assert page.headers["cache-control"] == "no-store"


def test_logout_is_audited_and_ends_the_session(console: Console) -> None:
    add_user(console, "wang", Role.ADMIN)
    with console.client() as client:
        login(client, "wang")
        token = csrf_of(client.get("/").text)
        assert client.post("/logout", data={"csrf_token": token}).headers["location"] == "/login"
        assert client.get("/").status_code == 303
    actions = [e.action for e in accounts.audit_entries(console.core)]
    assert actions == ["user.logout", "user.login", "user.add"]


def test_login_never_redirects_off_site(console: Console) -> None:
    add_user(console, "wang", Role.VIEWER)
    with console.client() as client:
        response = login(client, "wang", next_="//evil.example/x")
        assert response.headers["location"] == "/"
    assert safe_next("https://evil.example") == "/"
    assert safe_next("/\\evil.example") == "/"
    assert safe_next("/reports?month=2022-10") == "/reports?month=2022-10"


def test_vendored_assets_are_served(console: Console) -> None:
    with console.client() as client:
        for name, marker in (("htmx.min.js", "htmx"), ("chart.umd.min.js", "Chart.js v4")):
            response = client.get(f"/static/{name}")
            assert response.status_code == 200
            assert "javascript" in response.headers["content-type"]
            assert marker in response.text[:2000]
        assert client.get("/static/console.css").status_code == 200
    assert (STATIC / "htmx.LICENSE").read_text().startswith("Zero-Clause BSD")
    assert "MIT" in (STATIC / "chart.js.LICENSE.md").read_text()


def test_secret_is_generated_once_privately_unless_configured(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    first = console_secret(settings)
    assert len(first) >= 40
    path = tmp_path / "var" / SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert console_secret(settings) == first
    configured = Settings(
        data_dir=tmp_path / "other",
        console=ConsoleSettings(secret_key=SecretStr("from-the-environment")),
    )
    assert console_secret(configured) == "from-the-environment"
    assert not (tmp_path / "other" / SECRET_FILE).exists()


def test_secret_key_setting_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PINGAN_CONSOLE__SECRET_KEY", "s3cret-from-env")
    settings = Settings()
    assert settings.console.secret_key.get_secret_value() == "s3cret-from-env"
    assert "s3cret-from-env" not in str(settings.public_view())


def test_a_town_user_is_held_to_its_town(core: Core) -> None:
    town_user = accounts.create_user(core, "li", Role.OPERATOR, PASSWORD, town="huanghu")
    district_user = accounts.create_user(core, "wang", Role.OPERATOR, PASSWORD)
    check_town(town_user, "huanghu")
    check_town(district_user, "baiguan")
    with pytest.raises(Forbidden, match="黄湖镇"):
        check_town(town_user, "baiguan")
