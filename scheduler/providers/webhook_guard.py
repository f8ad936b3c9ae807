"""The guard of a gateway's unsigned pushes: a shared token and an address allow-list.

Neither domestic gateway signs its receipt and reply pushes, so the URL configured in its
console carries a token (`?token=…`, or an `X-Pingan-Token` header) and the pushes may be
limited to the gateway's addresses. Without a token nothing can be trusted: 503, no change.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

from fastapi import Request

from scheduler.logs import get_logger
from scheduler.providers.base import WebhookRefused
from scheduler.settings import PushGatewaySettings
from scheduler.web.schemas import ErrorOut, ValidationErrorOut

log = get_logger("scheduler.providers.webhooks")

REFUSALS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "a missing or wrong token, or an address not allowed"},
    422: {"model": ValidationErrorOut, "description": "an unreadable body, impossible values"},
    503: {"model": ErrorOut, "description": "no webhook token configured"},
}


def push_guard(cfg: PushGatewaySettings, *, setting: str) -> Callable[[Request], None]:
    """A route dependency, run before the body is read: an untrusted push is refused
    whatever it holds. `setting` names the token's environment variable for the 503."""
    token = cfg.webhook_token.get_secret_value()
    allowed = [ipaddress.ip_network(n, strict=False) for n in cfg.webhook_allow_ips]

    def verify(request: Request) -> None:
        if not token:
            raise WebhookRefused(503, f"未配置回调令牌 ({setting})，不接受推送")
        peer = request.client.host if request.client else ""
        if allowed:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                address = None
            if address is None or not any(address in net for net in allowed):
                log.warning("webhook.refused_address", path=request.url.path)
                raise WebhookRefused(403, "来源地址不在允许列表中")
        given = request.query_params.get("token") or request.headers.get("X-Pingan-Token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            log.warning("webhook.bad_token", path=request.url.path)
            raise WebhookRefused(403, "令牌无效")

    return verify
