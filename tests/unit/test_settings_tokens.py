"""PINGAN_API_TOKENS: named tokens from the environment, checked at start-up."""

from __future__ import annotations

import pytest

from scheduler.exceptions import SettingsError
from scheduler.settings import Settings, load_settings


def test_named_tokens_and_the_single_token_named_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINGAN_API_TOKENS", " township = tok-1 ,police=tok-2,")
    monkeypatch.setenv("PINGAN_API_TOKEN", "tok-legacy")
    settings = Settings()
    assert settings.api_callers() == {
        "tok-1": "township",
        "tok-2": "police",
        "tok-legacy": "default",
    }
    assert "tok-1" not in str(settings.public_view())
    assert Settings(api_tokens="", api_token="").api_callers() == {}


@pytest.mark.parametrize(
    "value", ["just-a-token", "=tok", "name=", "a=1,a=2", "a=tok en", "a=令牌"]
)
def test_malformed_token_lists_stop_the_start(value: str) -> None:
    with pytest.raises(SettingsError, match="PINGAN_API_TOKENS"):
        load_settings(api_tokens=value)
