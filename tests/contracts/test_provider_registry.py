"""Providers by name: an unknown PINGAN_PROVIDER is refused before anything is planned or
sent, naming the providers that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.exceptions import SettingsError
from scheduler.providers import names, provider_class
from scheduler.providers.registry import check_name
from tests.acceptance.test_cli_acceptance import pingan


def test_registry_lists_the_providers() -> None:
    assert {"aliyun", "dryrun", "twilio"} <= set(names()) and names() == sorted(names())
    with pytest.raises(SettingsError, match="known: aliyun, dryrun, "):
        provider_class("smpp")
    assert check_name("twilio") == "twilio"


def test_unknown_provider_fails_before_anything_runs(tmp_path: Path) -> None:
    done = pingan(
        tmp_path, "run", "--once", "--clock", "2022-10-10T09:30", ok=False, PINGAN_PROVIDER="smpp"
    )
    assert done.returncode != 0
    assert "unknown provider 'smpp' (known: aliyun, dryrun, " in done.stderr + done.stdout
    # Nothing was planned: no database was even created.
    assert not (tmp_path / "var" / "pingan.db").exists()
