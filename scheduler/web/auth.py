"""Who may call /api/*: one guard, attached to the router that holds every API route.

`Authorization: Bearer <token>` only, compared in constant time against the named tokens
(PINGAN_API_TOKENS, PINGAN_API_TOKEN as `default`); the name is the caller the audit log
records. With no token configured the API answers loopback peers only, and refuses a request
carrying a forwarding header: behind a reverse proxy on the same host every caller would
otherwise look local.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from scheduler.logs import get_logger
from scheduler.settings import Settings

log = get_logger("scheduler.web.auth")

LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
FORWARDING_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
LOCAL_CALLER = "local"

_bearer = HTTPBearer(auto_error=False, description="a token from PINGAN_API_TOKENS")


@dataclass(frozen=True)
class Caller:
    """The token's name (or `local`) and the peer address, for the audit log."""

    name: str
    peer: str


class ApiRefusal(Exception):
    """401 or 403, rendered as {"error": ...} by the app."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


class ApiGuard:
    """The dependency on the /api router. A class, so a test can find it on every route."""

    def __init__(self, settings: Settings) -> None:
        self._callers = [
            (token.encode("utf-8"), name) for token, name in settings.api_callers().items()
        ]

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        peer = request.client.host if request.client is not None else ""
        if not self._callers:
            if peer not in LOOPBACK:
                raise ApiRefusal(403, "未配置 API 令牌时只接受本机 (127.0.0.1) 的请求")
            if any(h in request.headers for h in FORWARDING_HEADERS):
                raise ApiRefusal(403, "未配置 API 令牌时不接受经代理转发的请求")
            return Caller(LOCAL_CALLER, peer)
        if credentials is None:
            raise ApiRefusal(401, "需要 Authorization: Bearer <令牌>")
        # Header values arrive decoded as Latin-1; any byte compares, none raises.
        given = credentials.credentials.encode("latin-1", errors="replace")
        name = None
        for token, token_name in self._callers:
            if hmac.compare_digest(given, token):
                name = token_name
        if name is None:
            log.warning("api.bad_token", peer=peer, path=request.url.path)
            raise ApiRefusal(401, "API 令牌无效")
        return Caller(name, peer)
