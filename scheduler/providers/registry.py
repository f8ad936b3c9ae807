"""Providers by name. A provider is added by one line here (its class, as a dotted path, so
naming it costs no import of its SDK); nothing else in the engine changes."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from scheduler.exceptions import SettingsError

if TYPE_CHECKING:
    from scheduler.providers.base import Provider

_PROVIDERS: dict[str, str] = {
    "dryrun": "scheduler.providers.dryrun:DryRunProvider",
    "twilio": "scheduler.providers.twilio:TwilioProvider",
    "aliyun": "scheduler.providers.aliyun:AliyunProvider",
    "tencent": "scheduler.providers.tencent:TencentProvider",
}


def names() -> list[str]:
    return sorted(_PROVIDERS)


def register(name: str, target: str) -> None:
    """Add a provider class (`module:Class`) under `name`."""
    _PROVIDERS[name] = target


def check_name(name: str) -> str:
    """The name, if a provider is registered under it; else a SettingsError listing them."""
    if name not in _PROVIDERS:
        raise SettingsError(f"unknown provider {name!r} (known: {', '.join(names())})")
    return name


def provider_class(name: str) -> type[Provider]:
    module, _, attr = _PROVIDERS[check_name(name)].partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module), attr)
    return cls


def provider_classes() -> list[type[Provider]]:
    return [provider_class(n) for n in names()]
