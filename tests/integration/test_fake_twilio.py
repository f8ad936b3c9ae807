"""The real twilio client against the fake Twilio on 127.0.0.1: every outcome classified."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from scheduler.providers.base import ErrorKind, OutboundMessage, SendError
from scheduler.providers.twilio import TwilioProvider
from scheduler.settings import Settings, TwilioSettings
from scheduler.testing.fake_twilio import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FakeConfig,
    FakeTwilio,
    running_fake_twilio,
)

MSG = OutboundMessage(1, "13800138000", "【平安上虞】测试回T退订", "mobile", 1)


def _provider(fake: FakeTwilio, timeout: float = 1.0) -> TwilioProvider:
    settings = Settings(
        twilio=TwilioSettings(
            account_sid=ACCOUNT_SID,
            auth_token=SecretStr(AUTH_TOKEN),
            messaging_service_sid="MG" + "1" * 32,
            base_url=fake.base_url,
            timeout_seconds=timeout,
        ),
        public_base_url="https://pingan.example.org",
    )
    return TwilioProvider(settings.twilio, settings)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with running_fake_twilio() as f:
        yield f


def test_success_reaches_the_fake_with_callback_url(fake: FakeTwilio) -> None:
    p = _provider(fake)
    accepted = p.send(MSG)
    p.close()
    assert accepted.provider_message_id.startswith("SM")
    stored = fake.messages[accepted.provider_message_id]
    assert stored.to == "+8613800138000"
    assert stored.status_callback == "https://pingan.example.org/webhooks/twilio/status"
    assert stored.sender.startswith("MG")


@pytest.mark.parametrize(
    ("config", "kind", "code", "opt_out", "created"),
    [
        (FakeConfig(fail_429=1.0, retry_after=7), ErrorKind.TRANSIENT, "20429", False, 0),
        (FakeConfig(permanent={"21211": 1.0}), ErrorKind.PERMANENT, "21211", False, 0),
        (FakeConfig(permanent={"21610": 1.0}), ErrorKind.PERMANENT, "21610", True, 0),
        (FakeConfig(permanent={"30006": 1.0}), ErrorKind.PERMANENT, "30006", False, 0),
        (FakeConfig(fail_500_after_create=1.0), ErrorKind.UNCERTAIN, "20500", False, 1),
        (
            FakeConfig(timeout_after_create=1.0, timeout_seconds=1.5),
            ErrorKind.UNCERTAIN,
            None,
            False,
            1,
        ),
    ],
)
def test_each_failure_is_classified_and_never_reposted(
    config: FakeConfig, kind: ErrorKind, code: str | None, opt_out: bool, created: int
) -> None:
    with running_fake_twilio(config) as fake:
        p = _provider(fake, timeout=0.5)
        with pytest.raises(SendError) as info:
            p.send(MSG)
        p.close()
        assert info.value.kind == kind
        assert info.value.code == code
        assert info.value.opted_out == opt_out
        if code == "20429":
            assert info.value.retry_after == 7.0
        # The client made exactly one request: no automatic re-POST.
        assert fake.stats()["requests"]["create"] == 1
        assert fake.created_count() == created


def test_find_sent_settles_an_uncertain_send(fake: FakeTwilio) -> None:
    fake.config.fail_500_after_create = 1.0
    p = _provider(fake)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    with pytest.raises(SendError):
        p.send(MSG)
    found = p.find_sent(MSG, since)
    assert found is not None
    assert found.provider_message_id in fake.messages
    other = OutboundMessage(2, "13800138001", "别的内容", "mobile", 1)
    assert p.find_sent(other, since) is None
    p.close()


def test_connection_refused_is_transient() -> None:
    fake = FakeTwilio()
    fake.base_url = "http://127.0.0.1:9"  # nothing listens there
    p = _provider(fake)
    with pytest.raises(SendError) as info:
        p.send(MSG)
    p.close()
    assert info.value.kind == ErrorKind.TRANSIENT
