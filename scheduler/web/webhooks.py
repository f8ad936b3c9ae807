"""Every registered provider's webhook routes, fed into the neutral callbacks.

Each provider contributes its own routes and verifies its own requests (scheduler.providers);
this module only collects them, so the web core names no provider.
"""

from __future__ import annotations

from fastapi import APIRouter

from scheduler.callbacks import Callbacks
from scheduler.core import Core
from scheduler.providers import provider_classes
from scheduler.providers.base import WebhookRefused as Refused

__all__ = ["Refused", "provider_routers"]


def provider_routers(core: Core) -> list[APIRouter]:
    events = Callbacks(core)
    routers = (cls.webhook_router(core.settings, events) for cls in provider_classes())
    return [r for r in routers if r is not None]
