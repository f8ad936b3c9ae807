"""The Tencent provider through the real `tencentcloud-sdk-python-sms` client against the fake
API on 127.0.0.1: batching, per-number results, the gateway's faults and the look-ups."""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from scheduler.providers.base import Accepted, DeliveryStatus, ErrorKind, OutboundMessage, SendError
from scheduler.providers.tencent import (
    MAX_NUMBERS,
    SESSION_BYTES,
    TencentProvider,
    decode_ids,
    encode_ids,
    plan_calls,
    positional,
)
from scheduler.settings import Settings, TencentSettings
from scheduler.testing.fake_tencent import (
    SDK_APP_ID,
    SECRET_ID,
    SECRET_KEY,
    SIGN_NAME,
    FakeConfig,
    FakeTencent,
    running_fake_tencent,
)
from tests.conftest import ROOT


def _settings(endpoint: str, **overrides: object) -> Settings:
    cfg = {
        "secret_id": SECRET_ID,
        "secret_key": SecretStr(SECRET_KEY),
        "sdk_app_id": SDK_APP_ID,
        "sign_name": SIGN_NAME,
        "endpoint": endpoint,
        "protocol": "http",
        "timeout_seconds": 0.5,
        "report_wait_seconds": 0,
        **overrides,
    }
    return Settings(config_dir=ROOT / "config", tencent=TencentSettings(**cfg))  # type: ignore[arg-type]


def _msg(
    i: int, template: str = "slogan-01", params: dict[str, str] | None = None
) -> OutboundMessage:
    return OutboundMessage(
        i,
        f"138{i:08d}",
        "【平安示范区】…",
        "mobile",
        1,
        template=template,
        params={"1": "示范区"} if params is None else params,
    )


@pytest.fixture
def fake() -> Iterator[FakeTencent]:
    with running_fake_tencent(FakeConfig()) as f:
        yield f


@pytest.fixture
def provider(fake: FakeTencent) -> Iterator[TencentProvider]:
    p = TencentProvider.from_settings(_settings(fake.endpoint))
    yield p
    p.close()


def _since() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)


def test_session_context_names_the_ids_within_512_bytes() -> None:
    ids = [7, 8, 9, 1000, 123_456_789]
    assert decode_ids(encode_ids(ids)) == set(ids)
    assert decode_ids("") is None and decode_ids("someone-else") is None
    msgs = [_msg(i * 997) for i in range(1, 450)]
    calls = plan_calls(msgs)
    assert sorted(m.id for c in calls for m in c) == sorted(m.id for m in msgs)
    for call in calls:
        assert len(call) <= MAX_NUMBERS
        assert len(encode_ids([m.id for m in call]).encode()) <= SESSION_BYTES
    # Close ids fill a call to the API's 200.
    assert [len(c) for c in plan_calls([_msg(i) for i in range(1, 451)])] == [200, 200, 50]


def test_a_number_twice_goes_in_two_calls() -> None:
    a, b = _msg(1), _msg(2)
    b = OutboundMessage(2, a.phone, a.body, a.carrier, 1, template=a.template, params=a.params)
    assert [[m.id for m in c] for c in plan_calls([a, b, _msg(3)])] == [[1, 3], [2]]


def test_parameters_go_in_their_positions() -> None:
    params = {str(i): f"v{i}" for i in range(1, 12)}
    assert positional(params) == [f"v{i}" for i in range(1, 12)]


def test_batch_grouped_by_template_and_values(fake: FakeTencent, provider: TencentProvider) -> None:
    msgs = [_msg(i) for i in range(1, 6)] + [_msg(i, params={"1": "另区"}) for i in range(6, 9)]
    msgs.append(_msg(9, template="participation-ways"))
    results = provider.send_batch(msgs)
    assert all(isinstance(r, Accepted) for r in results)
    assert fake.stats()["requests"] == {"SendSms": 3}
    with fake.lock:
        sent = {fake.messages[s].phone: fake.messages[s] for s in fake.order}
    assert sent["+8613800000001"].params == ["示范区"] and sent["+8613800000006"].params == ["另区"]
    assert sent["+8613800000009"].template == "2100003"
    assert {r.provider_message_id for r in results if isinstance(r, Accepted)} == set(fake.messages)


def test_each_number_gets_its_own_result(fake: FakeTencent, provider: TencentProvider) -> None:
    fake.config.daily_limit = 1
    provider.send(_msg(1))
    results = provider.send_batch([_msg(1), _msg(2), _msg(3, params={})])
    limited, ok, unmapped = results
    assert isinstance(ok, Accepted)
    assert isinstance(limited, SendError) and limited.kind == ErrorKind.TRANSIENT
    assert limited.code == "LimitExceeded.PhoneNumberDailyLimit" and limited.retry_after == 14400
    # Parameters that do not fit the mapping: the campaign halts, nothing is sent for it.
    assert isinstance(unmapped, SendError) and unmapped.halt
    assert fake.per_number == {"+8613800000001": 1, "+8613800000002": 1}


def test_blacklisted_number_is_an_opt_out(fake: FakeTencent, provider: TencentProvider) -> None:
    fake.config.permanent = {"FailedOperation.PhoneNumberInBlacklist": 1.0}
    with pytest.raises(SendError) as err:
        provider.send(_msg(1))
    assert err.value.kind == ErrorKind.PERMANENT and err.value.opted_out
    assert fake.created_count() == 0


def test_throttled_call_is_transient(fake: FakeTencent, provider: TencentProvider) -> None:
    fake.config.throttle = 1.0
    results = provider.send_batch([_msg(1), _msg(2)])
    assert {(r.kind, r.code) for r in results if isinstance(r, SendError)} == {
        (ErrorKind.TRANSIENT, "RequestLimitExceeded")
    }
    assert fake.created_count() == 0


def test_unapproved_template_or_signature_halts(fake: FakeTencent) -> None:
    fake.config.unapproved_templates = {"2100002"}
    p = TencentProvider.from_settings(_settings(fake.endpoint))
    try:
        ok, halted = p.send_batch([_msg(1), _msg(2, template="participation-meaning")])
        assert isinstance(ok, Accepted)
        assert isinstance(halted, SendError) and halted.halt
        assert halted.code == "FailedOperation.TemplateIncorrectOrUnapproved"
    finally:
        p.close()
    p = TencentProvider.from_settings(_settings(fake.endpoint, sign_name="别的签名"))
    try:
        with pytest.raises(SendError) as err:
            p.send(_msg(3))
        assert err.value.halt and err.value.code == "FailedOperation.SignatureIncorrectOrUnapproved"
    finally:
        p.close()


def test_wrong_key_is_refused_by_the_signature_check(fake: FakeTencent) -> None:
    p = TencentProvider.from_settings(_settings(fake.endpoint, secret_key=SecretStr("wrong")))
    try:
        with pytest.raises(SendError) as err:
            p.send(_msg(1))
        assert err.value.halt and err.value.code == "AuthFailure.SignatureFailure"
        assert fake.created_count() == 0
    finally:
        p.close()


@pytest.mark.parametrize("fault", ["fail_500_after_create", "timeout_after_create"])
def test_lost_answer_is_uncertain_and_found(
    fake: FakeTencent, provider: TencentProvider, fault: str
) -> None:
    setattr(fake.config, fault, 1.0)
    fake.config.timeout_seconds = 1.0
    msgs = [_msg(1), _msg(2)]
    results = provider.send_batch(msgs)
    assert all(isinstance(r, SendError) and r.kind == ErrorKind.UNCERTAIN for r in results)
    setattr(fake.config, fault, 0.0)
    found = provider.find_sent_many([(m, _since()) for m in [*msgs, _msg(3)]])
    assert [type(f).__name__ for f in found] == ["Accepted", "Accepted", "NoneType"]
    assert {f.provider_message_id for f in found if isinstance(f, Accepted)} == set(fake.messages)
    assert provider.find_sent(msgs[0], _since()) == found[0]
    assert isinstance(found[0], Accepted) and found[0].status == DeliveryStatus.DELIVERED


def test_lookup_tells_two_messages_to_one_number_apart(
    fake: FakeTencent, provider: TencentProvider
) -> None:
    first = provider.send(_msg(1))
    again = OutboundMessage(50, _msg(1).phone, "b", "mobile", 1, "slogan-02", {"1": "示范区"})
    second = provider.send(again)
    assert provider.find_sent(_msg(1), _since()) == Accepted(
        first.provider_message_id, DeliveryStatus.DELIVERED
    )
    found = provider.find_sent(again, _since())
    assert found is not None and found.provider_message_id == second.provider_message_id
    # Before the first was sent, nothing of ours was there.
    assert provider.find_sent(_msg(1), dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)) is None


def test_lookup_waits_for_a_late_report(fake: FakeTencent) -> None:
    """Tencent lists a message only once its carrier report is in: a look-up right after a
    lost answer pulls again when the report could have come, instead of resending."""
    fake.config.report_delay = 1.5
    fake.config.fail_500_after_create = 1.0
    hasty = TencentProvider.from_settings(_settings(fake.endpoint))
    patient = TencentProvider.from_settings(_settings(fake.endpoint, report_wait_seconds=4))
    try:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        with pytest.raises(SendError) as err:
            patient.send(_msg(1))
        assert err.value.kind == ErrorKind.UNCERTAIN
        assert hasty.find_sent(_msg(1), since) is None  # too early: a resend would duplicate
        started = time.monotonic()
        found = patient.find_sent(_msg(1), since)
        assert found is not None and found.provider_message_id in fake.messages
        assert 0.5 < time.monotonic() - started < 4.5
    finally:
        hasty.close()
        patient.close()


def _refusing_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_connection_refused_is_never_sent_and_lookup_is_uncertain(tmp_path: Path) -> None:
    p = TencentProvider.from_settings(_settings(f"127.0.0.1:{_refusing_port()}"))
    try:
        with pytest.raises(SendError) as err:
            p.send(_msg(1))
        assert err.value.kind == ErrorKind.TRANSIENT
        [lookup] = p.find_sent_many([(_msg(1), _since())])
        assert isinstance(lookup, SendError) and lookup.kind == ErrorKind.UNCERTAIN
    finally:
        p.close()


def test_missing_settings_are_named() -> None:
    from scheduler.exceptions import SettingsError

    with pytest.raises(SettingsError, match="PINGAN_TENCENT__SDK_APP_ID"):
        TencentProvider.from_settings(_settings("127.0.0.1:1", sdk_app_id=""))
