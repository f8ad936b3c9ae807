"""The aliyun provider's classification and batching, through the real SDK against the fake:
what the gateway says (or fails to say) becomes the right kind of result for each number."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from scheduler.providers.aliyun import AliyunProvider, provider_id
from scheduler.providers.base import Accepted, ErrorKind, OutboundMessage, SendError
from scheduler.settings import AliyunSettings, Settings
from scheduler.testing.fake_aliyun import FakeAliyun, FakeConfig, running_fake_aliyun
from tests.integration.test_web import _free_port

ROOT = Path(__file__).resolve().parents[2]
CHINA = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def fake() -> Iterator[FakeAliyun]:
    with running_fake_aliyun(FakeConfig(keys={"AK": "secret"})) as f:
        yield f


def _provider(endpoint: str, timeout: float = 2.0) -> AliyunProvider:
    settings = Settings(
        config_dir=ROOT / "config",
        provider="aliyun",
        aliyun=AliyunSettings(
            access_key_id="AK",
            access_key_secret=SecretStr("secret"),
            sign_name="平安上虞",
            endpoint=endpoint,
            protocol="http",
            timeout_seconds=timeout,
        ),
    )
    return AliyunProvider.from_settings(settings)


def _msg(i: int, phone: str | None = None, template: str = "slogan-01") -> OutboundMessage:
    return OutboundMessage(
        i,
        phone or f"1390000{i:04d}",
        "【平安上虞】…",
        "mobile",
        1,
        template,
        {"district": "上虞"} if template.startswith("slogan") else None,
    )


def test_a_batch_goes_in_one_call_and_each_number_gets_its_own_id(fake: FakeAliyun) -> None:
    p = _provider(fake.endpoint)
    msgs = [_msg(i) for i in range(10, 20)]
    results = p.send_batch(msgs)
    assert fake.requests["SendBatchSms"] == 1 and fake.sent_count() == 10
    assert [r.provider_message_id for r in results if isinstance(r, Accepted)] == [
        provider_id("10", m.phone) for m in msgs
    ]
    assert {m.out_id for m in fake.messages} == {"10"}
    assert all(m.params == {"district": "上虞"} and m.sign == "平安上虞" for m in fake.messages)


def test_a_number_twice_in_a_batch_goes_in_two_calls(fake: FakeAliyun) -> None:
    p = _provider(fake.endpoint)
    results = p.send_batch([_msg(1, "13900001111"), _msg(2), _msg(3, "13900001111")])
    ids = [r.provider_message_id for r in results if isinstance(r, Accepted)]
    assert len(ids) == len(set(ids)) == 3
    assert fake.requests["SendBatchSms"] + fake.requests["SendSms"] == 2


def test_a_daily_limit_in_a_batch_retries_that_number_only(fake: FakeAliyun) -> None:
    """The gateway refuses the whole batch for one limited number: nothing was sent, so the
    numbers go again one by one and only the limited one is retried later."""
    fake.config.daily_limit = 1
    p = _provider(fake.endpoint)
    assert isinstance(p.send(_msg(1, "13900002222")), Accepted)
    results = p.send_batch([_msg(2), _msg(3, "13900002222"), _msg(4)])
    limited = results[1]
    assert isinstance(limited, SendError) and limited.kind == ErrorKind.TRANSIENT
    assert limited.code == "isv.DAY_LIMIT_CONTROL" and limited.retry_after == 21600
    assert isinstance(results[0], Accepted) and isinstance(results[2], Accepted)
    assert fake.sent_count() == 3 and fake.duplicates() == []


def test_throttling_is_transient_with_the_gateways_wait(fake: FakeAliyun) -> None:
    fake.config.throttle = 1.0
    fake.config.retry_after_ms = 3000
    results = _provider(fake.endpoint).send_batch([_msg(1), _msg(2)])
    for r in results:
        assert isinstance(r, SendError) and r.kind == ErrorKind.TRANSIENT
        assert r.code == "Throttling.User" and r.retry_after == 3.0
    fake.config.retry_after_ms = 0
    with pytest.raises(SendError) as caught:
        _provider(fake.endpoint).send(_msg(3))
    assert caught.value.retry_after == 1  # the catalogue's wait when the gateway gives none
    assert fake.sent_count() == 0


def test_an_unapproved_template_halts(fake: FakeAliyun) -> None:
    p = _provider(fake.endpoint)
    mapping = p.templates.get("aliyun", "slogan-01")
    assert mapping is not None
    fake.config.unapproved_templates = {mapping.code}
    [r] = p.send_batch([_msg(1)])
    assert isinstance(r, SendError) and r.halt and r.code == "isv.SMS_TEMPLATE_ILLEGAL"
    assert r.meaning.startswith("Template not approved")


def test_no_answer_after_sending_is_uncertain_and_found_by_lookup(fake: FakeAliyun) -> None:
    fake.config.timeout_after_accept = 1.0
    fake.config.timeout_seconds = 1.5
    p = _provider(fake.endpoint, timeout=0.5)
    since = dt.datetime.now(CHINA) - dt.timedelta(seconds=5)
    msgs = [_msg(7), _msg(8)]
    results = p.send_batch(msgs)
    assert all(isinstance(r, SendError) and r.kind == ErrorKind.UNCERTAIN for r in results)
    found = p.find_sent_many([(m, since) for m in msgs] + [(_msg(9), since)])
    assert [f.provider_message_id if isinstance(f, Accepted) else f for f in found] == [
        provider_id("7", msgs[0].phone),
        provider_id("7", msgs[1].phone),
        None,
    ]
    assert fake.sent_count() == 2


def test_a_refused_connection_is_transient() -> None:
    p = _provider(f"127.0.0.1:{_free_port()}")
    with pytest.raises(SendError) as caught:
        p.send(_msg(1))
    assert caught.value.kind == ErrorKind.TRANSIENT


def test_a_5xx_after_accepting_is_uncertain(fake: FakeAliyun) -> None:
    fake.config.fail_500_after_accept = 1.0
    with pytest.raises(SendError) as caught:
        _provider(fake.endpoint).send(_msg(1))
    assert caught.value.kind == ErrorKind.UNCERTAIN and caught.value.http_status == 500
    assert fake.sent_count() == 1


def test_a_wrong_secret_halts(fake: FakeAliyun) -> None:
    fake.config.keys = {"AK": "rotated"}
    with pytest.raises(SendError) as caught:
        _provider(fake.endpoint).send(_msg(1))
    assert caught.value.halt and caught.value.code == "SignatureDoesNotMatch"
