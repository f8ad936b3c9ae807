"""Providers that send SMS, as plug-ins found by name (scheduler.providers.registry)."""

from __future__ import annotations

from pathlib import Path

from scheduler.providers.base import ErrorInfo, Provider
from scheduler.providers.registry import names, provider_class, provider_classes
from scheduler.settings import Settings

__all__ = ["error_meanings", "make_provider", "names", "provider_class", "provider_classes"]


def make_provider(settings: Settings) -> Provider:
    """The configured provider; an unknown or unconfigured one fails before anything runs."""
    return provider_class(settings.provider).from_settings(settings)


def error_meanings(config_dir: Path) -> dict[str, ErrorInfo]:
    """Every registered provider's catalogue in one (for delivery stats: stored messages may
    come from a provider used before the current one)."""
    out: dict[str, ErrorInfo] = {}
    for cls in provider_classes():
        for code, info in cls.catalogue(config_dir).items():
            out.setdefault(code, info)
    return out
