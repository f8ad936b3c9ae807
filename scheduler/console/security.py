"""Sessions, CSRF tokens, role and town checks for the console.

The session is Starlette's signed cookie (HttpOnly, SameSite=Lax, expiring `session_hours`
after the last request). It holds the user's id and session epoch, checked against the database
on every request, so disabling a user or changing a password ends its sessions at once.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request

from scheduler import accounts
from scheduler.accounts import Account
from scheduler.core import Core
from scheduler.exceptions import SettingsError
from scheduler.models import Role
from scheduler.settings import Settings

SESSION_COOKIE = "pingan_console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SECRET_FILE = "console-secret.key"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class LoginRequired(Exception):
    """No valid session: the browser goes to the login page and comes back after."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class Forbidden(Exception):
    """Logged in, but not allowed: shown as a 403 page with the reason in Chinese."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CsrfFailed(Forbidden):
    """A form came without this session's token: refused with 403."""

    def __init__(self) -> None:
        super().__init__("页面已过期或请求来源无法确认（CSRF 校验失败），请返回并刷新页面后重试。")


def console_secret(settings: Settings) -> str:
    """PINGAN_CONSOLE__SECRET_KEY, else a key generated once into the data dir (mode 0600).

    Several processes may start together: the first creates the file, the others read it.
    """
    configured = settings.console.secret_key.get_secret_value()
    if configured:
        return configured
    path = Path(settings.data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            key = path.read_text(encoding="ascii").strip()
            if key:
                return key
            time.sleep(0.02)  # the creator has not written it yet
        raise SettingsError(
            f"{path} is empty; delete it or set PINGAN_CONSOLE__SECRET_KEY"
        ) from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    return key


def csrf_token(request: Request) -> str:
    """This session's CSRF token, created on first use (also for the anonymous login form)."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def verify_csrf(request: Request) -> None:
    """Every unsafe request carries the session's token in the form or the htmx header."""
    if request.method not in _UNSAFE:
        return
    expected = request.session.get("csrf")
    sent = request.headers.get(CSRF_HEADER)
    if not sent:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not (isinstance(expected, str) and expected and sent) or not hmac.compare_digest(
        expected.encode(), sent.encode()
    ):
        raise CsrfFailed()


def peer(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def start_session(request: Request, account: Account) -> None:
    """A fresh session after login: a new CSRF token, so one seen before login is worthless."""
    request.session.clear()
    request.session.update(
        uid=account.id,
        epoch=account.session_epoch,
        csrf=secrets.token_urlsafe(32),
        seen=int(time.time() // 60),
    )


def session_user(core: Core, request: Request) -> Account | None:
    """The logged-in account, or None (no session, or ended by a disable or password change)."""
    uid, epoch = request.session.get("uid"), request.session.get("epoch")
    if not isinstance(uid, int) or not isinstance(epoch, int):
        return None
    account = accounts.session_account(core, uid, epoch)
    if account is None:
        request.session.clear()
        return None
    minute = int(time.time() // 60)
    if request.session.get("seen") != minute:
        request.session["seen"] = minute  # re-signs the cookie: the expiry counts from now
    return account


def requires(core: Core, role: Role, *, district_only: bool = False) -> Callable[..., Account]:
    """A dependency: the logged-in account if its role is at least `role`.

    Anonymous → login page; too low a role, or a town user on a district-only page → 403.
    """

    def dependency(request: Request) -> Account:
        account = session_user(core, request)
        if account is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(target if request.method == "GET" else "/")
        if not account.allows(role):
            raise Forbidden(
                f"此操作需要{accounts.ROLE_LABELS[role]}或更高权限，您当前是{account.role_label}。"
            )
        if district_only and account.town_id:
            raise Forbidden("此页面仅对区级账号开放，镇（街道）账号只能查看本镇的数据。")
        return account

    return dependency


def town_scope(account: Account) -> str | None:
    """The only town a town user may see; None for a district user (every town)."""
    return account.town_id


def check_town(account: Account, town_id: str) -> None:
    """Refuse a town user's request about another town."""
    if account.town_id is not None and account.town_id != town_id:
        raise Forbidden(f"您的账号只能查看和操作{account.town_name or account.town_id}的数据。")


def safe_next(value: Any) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if (
        isinstance(value, str)
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
    ):
        return value
    return "/"
