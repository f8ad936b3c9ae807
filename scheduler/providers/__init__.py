"""Providers that send SMS: dry-run (the default) and Twilio, behind one interface."""

from __future__ import annotations

from scheduler.exceptions import SettingsError
from scheduler.providers.base import Provider
from scheduler.settings import Settings


def make_provider(settings: Settings) -> Provider:
    """The configured provider; an unknown or unconfigured one fails before anything runs."""
    if settings.provider == "dryrun":
        from scheduler.providers.dryrun import DryRunProvider

        return DryRunProvider(settings.dryrun, settings.dryrun_log_file)
    if settings.provider == "twilio":
        from scheduler.providers.twilio import TwilioProvider

        return TwilioProvider(settings.twilio, settings)
    raise SettingsError(f"unknown provider {settings.provider!r} (dryrun, twilio)")
