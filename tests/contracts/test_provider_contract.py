"""The contract every registered provider keeps, run through the real dispatcher and store.

One suite, parametrised over the registry: each provider comes with a harness that knows how
to inject its gateway's faults and push its receipts (dry-run in-process; Twilio with the real
`twilio` client against scheduler/testing/fake_twilio.py and the real HTTP app on 127.0.0.1).
Aliyun runs the real Alibaba Cloud SDK against scheduler/testing/fake_aliyun.py. A new provider
(issue 14: tencent) must add a harness here, or the first test fails.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.callbacks import Callbacks
from scheduler.core import Core
from scheduler.dispatcher import Dispatcher, build_dispatcher
from scheduler.gateway_templates import load_gateway_templates, load_params
from scheduler.models import Attempt, Message, MessageState, Occurrence, OptOut, SendCounter
from scheduler.providers import make_provider, names, provider_class
from scheduler.providers.aliyun import provider_id as aliyun_id
from scheduler.providers.base import DeliveryStatus, OutboundMessage, Provider, StatusReport
from scheduler.providers.dryrun import DryRunProvider
from scheduler.providers.dryrun import Fault as DryRunFault
from scheduler.settings import (
    AliyunSettings,
    DispatchSettings,
    DryRunSettings,
    Settings,
    TencentSettings,
    TwilioSettings,
)
from scheduler.store import delivery
from scheduler.testing import fake_tencent
from scheduler.testing.fake_aliyun import FakeAliyun, running_fake_aliyun
from scheduler.testing.fake_aliyun import FakeConfig as AliyunFakeConfig
from scheduler.testing.fake_twilio import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FakeConfig,
    FakeTwilio,
    running_fake_twilio,
)
from scheduler.web import HttpServer, create_app
from tests.factories import add_recipients
from tests.integration.test_web import _free_port

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)


class Fault(enum.StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    OPT_OUT = "opt_out"
    HALT = "halt"
    UNCERTAIN_SENT = "uncertain_sent"  # the provider took it, the answer was lost


class Clock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now


class Harness(abc.ABC):
    """What the suite needs of a provider's test double: faults, counts, receipts."""

    @abc.abstractmethod
    def settings(self, base: Settings) -> Settings: ...

    @abc.abstractmethod
    def provider(self, settings: Settings) -> Provider: ...

    @abc.abstractmethod
    def fault(self, fault: Fault | None) -> None:
        """From now on each send meets `fault` (None: no more faults)."""

    @abc.abstractmethod
    def sent(self) -> list[str]:
        """The numbers the provider holds a message for, one entry per message it created."""

    @abc.abstractmethod
    def push_receipts(self, core: Core) -> dict[str, DeliveryStatus]:
        """Push every receipt (sent, then final) duplicated and shuffled, the provider's way;
        returns the final status per provider message id."""

    def use_clock(self, clock: Clock) -> None:  # noqa: B027 - optional hook
        """The world's simulated clock, for a fake that dates what it sent (lookups by day)."""


class DryRunHarness(Harness):
    def __init__(self, tmp: Path) -> None:
        self.log = tmp / "dryrun.jsonl"
        self._provider: DryRunProvider | None = None

    def settings(self, base: Settings) -> Settings:
        return base.model_copy(
            update={
                "provider": "dryrun",
                "dryrun": DryRunSettings(
                    log_file=self.log,
                    show_numbers=True,
                    seed=3,
                    delivered_share=0.5,
                    undelivered_share=0.5,
                    failed_share=0.0,
                ),
            }
        )

    def provider(self, settings: Settings) -> Provider:
        self._provider = DryRunProvider.from_settings(settings)
        return self._provider

    def fault(self, fault: Fault | None) -> None:
        assert self._provider is not None
        self._provider._faults.clear()
        if fault is not None:
            self._provider.inject(*[DryRunFault(fault.value)] * 50)

    def _lines(self) -> list[dict[str, str]]:
        if not self.log.exists():
            return []
        return [json.loads(x) for x in self.log.read_text(encoding="utf-8").splitlines()]

    def sent(self) -> list[str]:
        assert self._provider is not None
        with self._provider._lock:
            if self._provider._fh is not None:
                self._provider._fh.flush()
        return [line["to"] for line in self._lines()]

    def push_receipts(self, core: Core) -> dict[str, DeliveryStatus]:
        self.sent()  # flush
        events = Callbacks(core)
        final = {x["sid"]: DeliveryStatus(x["simulated_status"]) for x in self._lines()}
        reports = [StatusReport(sid, DeliveryStatus.SENT) for sid in final]
        reports += [StatusReport(sid, st) for sid, st in final.items()] * 2
        random.Random(5).shuffle(reports)
        for r in reports:
            assert events.status(r) in {"applied", "unchanged"}
        return final


class AliyunHarness(Harness):
    """The real Alibaba Cloud SDK against scheduler/testing/fake_aliyun.py, signatures checked."""

    TOKEN = "receipt-token"

    def __init__(self, fake: FakeAliyun) -> None:
        self.fake = fake
        self.port = _free_port()

    def settings(self, base: Settings) -> Settings:
        return base.model_copy(
            update={
                "provider": "aliyun",
                "http_port": self.port,
                "aliyun": AliyunSettings(
                    access_key_id="AK-test",
                    access_key_secret=SecretStr("AK-secret"),
                    sign_name="平安上虞",
                    endpoint=self.fake.endpoint,
                    protocol="http",
                    timeout_seconds=0.5,
                    webhook_token=SecretStr(self.TOKEN),
                ),
            }
        )

    def provider(self, settings: Settings) -> Provider:
        return make_provider(settings)

    def use_clock(self, clock: Clock) -> None:
        self.fake.config.clock = clock

    def fault(self, fault: Fault | None) -> None:
        c = self.fake.config
        if fault == Fault.OPT_OUT:
            pytest.skip("aliyun refuses no send for an opt-out: refusals come as replies (SmsUp)")
        c.throttle = 1.0 if fault == Fault.TRANSIENT else 0.0
        c.fail_500_after_accept = 1.0 if fault == Fault.UNCERTAIN_SENT else 0.0
        c.illegal_number = 1.0 if fault == Fault.PERMANENT else 0.0
        # The template withdrawn at the gateway: isv.SMS_TEMPLATE_ILLEGAL for every send.
        codes = load_gateway_templates(Path("config")).by_gateway["aliyun"]
        c.unapproved_templates = {m.code for m in codes.values()} if fault == Fault.HALT else set()

    def sent(self) -> list[str]:
        with self.fake.lock:
            return [m.phone for m in self.fake.messages]

    def push_receipts(self, core: Core) -> dict[str, DeliveryStatus]:
        server = HttpServer(create_app(core), "127.0.0.1", self.port)
        server.start()
        try:
            time.sleep(0.5)
            url = f"http://127.0.0.1:{self.port}/webhooks/aliyun/status?token={self.TOKEN}"
            codes = self.fake.push_receipts(url, duplicate_share=1.0, shuffle=True, per_post=5)
        finally:
            server.stop()
        assert set(codes) == {200}
        with self.fake.lock:
            return {
                aliyun_id(m.out_id, m.phone): (
                    DeliveryStatus.DELIVERED if m.delivered else DeliveryStatus.UNDELIVERED
                )
                for m in self.fake.messages
            }


class TwilioHarness(Harness):
    def __init__(self, fake: FakeTwilio) -> None:
        self.fake = fake
        self.port = _free_port()

    def settings(self, base: Settings) -> Settings:
        return base.model_copy(
            update={
                "provider": "twilio",
                "public_base_url": "https://pingan.example.org",
                "http_port": self.port,
                "twilio": TwilioSettings(
                    account_sid=ACCOUNT_SID,
                    auth_token=SecretStr(AUTH_TOKEN),
                    messaging_service_sid="MG" + "1" * 32,
                    base_url=self.fake.base_url,
                    timeout_seconds=0.5,
                ),
            }
        )

    def provider(self, settings: Settings) -> Provider:
        return make_provider(settings)

    def fault(self, fault: Fault | None) -> None:
        c = self.fake.config
        c.fail_429 = 1.0 if fault == Fault.TRANSIENT else 0.0
        c.fail_500_after_create = 1.0 if fault == Fault.UNCERTAIN_SENT else 0.0
        code = {Fault.PERMANENT: "21211", Fault.OPT_OUT: "21610"}
        c.permanent = {code[fault]: 1.0} if fault in code else {}
        # The account's credentials revoked: Twilio answers 401, error 20003, to everything.
        c.auth_token = "revoked" if fault == Fault.HALT else AUTH_TOKEN

    def sent(self) -> list[str]:
        with self.fake.lock:
            return [self.fake.messages[sid].to for sid in self.fake.order]

    def push_receipts(self, core: Core) -> dict[str, DeliveryStatus]:
        server = HttpServer(create_app(core), "127.0.0.1", self.port)
        server.start()
        try:
            time.sleep(0.5)
            posts = self.fake.post_status_callbacks(
                f"http://127.0.0.1:{self.port}", duplicate_share=1.0, shuffle=True
            )
        finally:
            server.stop()
        assert {code for *_, code in posts} == {200}
        with self.fake.lock:
            return {sid: DeliveryStatus(m.final) for sid, m in self.fake.messages.items()}


class TencentHarness(Harness):
    """The real tencentcloud SDK against scheduler/testing/fake_tencent.py."""

    TOKEN = "contract-token"

    def __init__(self, fake: fake_tencent.FakeTencent) -> None:
        self.fake = fake
        self.port = _free_port()

    def settings(self, base: Settings) -> Settings:
        return base.model_copy(
            update={
                "provider": "tencent",
                "http_port": self.port,
                "tencent": TencentSettings(
                    secret_id=fake_tencent.SECRET_ID,
                    secret_key=SecretStr(fake_tencent.SECRET_KEY),
                    sdk_app_id=fake_tencent.SDK_APP_ID,
                    sign_name=fake_tencent.SIGN_NAME,
                    endpoint=self.fake.endpoint,
                    protocol="http",
                    timeout_seconds=0.5,
                    webhook_token=SecretStr(self.TOKEN),
                ),
            }
        )

    def provider(self, settings: Settings) -> Provider:
        return make_provider(settings)

    def fault(self, fault: Fault | None) -> None:
        c = self.fake.config
        c.throttle = 1.0 if fault == Fault.TRANSIENT else 0.0
        c.fail_500_after_create = 1.0 if fault == Fault.UNCERTAIN_SENT else 0.0
        code = {
            Fault.PERMANENT: "InvalidParameterValue.IncorrectPhoneNumber",
            Fault.OPT_OUT: "FailedOperation.PhoneNumberInBlacklist",
        }
        c.permanent = {code[fault]: 1.0} if fault in code else {}
        # No template of ours approved: FailedOperation.TemplateIncorrectOrUnapproved.
        c.unapproved_templates = {"*"} if fault == Fault.HALT else set()

    def sent(self) -> list[str]:
        return self.fake.sent_numbers()

    def push_receipts(self, core: Core) -> dict[str, DeliveryStatus]:
        server = HttpServer(create_app(core), "127.0.0.1", self.port)
        server.start()
        try:
            time.sleep(0.5)
            url = f"http://127.0.0.1:{self.port}/webhooks/tencent/status?token={self.TOKEN}"
            posts = self.fake.post_receipts(url, duplicate_share=1.0, shuffle=True)
        finally:
            server.stop()
        assert set(posts) == {200}
        final = {"SUCCESS": DeliveryStatus.DELIVERED, "FAIL": DeliveryStatus.UNDELIVERED}
        with self.fake.lock:
            return {sid: final[m.final] for sid, m in self.fake.messages.items()}


@pytest.fixture(params=names())
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    name = request.param
    if name == "dryrun":
        yield DryRunHarness(tmp_path)
    elif name == "twilio":
        with running_fake_twilio(FakeConfig(undelivered_share=0.5)) as fake:
            yield TwilioHarness(fake)
    elif name == "aliyun":
        config = AliyunFakeConfig(keys={"AK-test": "AK-secret"}, undelivered_share=0.5)
        with running_fake_aliyun(config) as fake:
            yield AliyunHarness(fake)
    elif name == "tencent":
        config = fake_tencent.FakeConfig(undelivered_share=0.5)
        with fake_tencent.running_fake_tencent(config) as tencent:
            yield TencentHarness(tencent)
    else:
        pytest.fail(f"provider {name!r} is registered but has no contract harness")


class World:
    """A district with `n` residents and this week's messages queued, and a dispatcher."""

    def __init__(self, harness: Harness, base: Settings, n: int) -> None:
        self.settings = harness.settings(base).model_copy(
            update={
                "dispatch": DispatchSettings(
                    concurrency=1, backoff_base_seconds=0, max_attempts=5, batch_size=100
                )
            }
        )
        self.clock = Clock(MONDAY + dt.timedelta(minutes=5))
        harness.use_clock(self.clock)
        self.core = Core(self.settings, clock=self.clock)
        add_recipients(self.core.engine, self.core.district, n)
        self.core.planner().fire_scheduled(self.core.campaigns.get("weekly-antifraud"), MONDAY)
        self.provider = harness.provider(self.settings)
        self.dispatcher: Dispatcher = build_dispatcher(self.core, self.provider)

    def messages(self) -> list[tuple[str, MessageState, str | None, int, str | None]]:
        with Session(self.core.engine) as s:
            rows = s.execute(
                select(
                    Message.phone,
                    Message.state,
                    Message.provider_message_id,
                    Message.attempts,
                    Message.error_code,
                ).order_by(Message.id)
            ).all()
        return [tuple(r) for r in rows]  # type: ignore[misc]

    def close(self) -> None:
        self.dispatcher.close()
        self.core.close()


@pytest.fixture
def world(harness: Harness, settings: Settings) -> Iterator[World]:
    w = World(harness, settings, 1)
    assert len(w.messages()) == 1
    yield w
    w.close()


def test_every_registered_provider_has_a_harness_and_a_catalogue() -> None:
    for name in names():
        cls = provider_class(name)
        assert cls.name == name
        catalogue = cls.catalogue(Path("config"))
        assert all(info.meaning for info in catalogue.values())
        # Every code fits where the store keeps it (a longer one needs a wider column first).
        width = Message.__table__.c.error_code.type.length
        assert all(len(code) <= width for code in catalogue), (name, width)


def test_send(harness: Harness, world: World) -> None:
    stats = world.dispatcher.run(until_empty=True)
    [(phone, state, pmid, attempts, _)] = world.messages()
    assert stats.sent == 1 and attempts == 1 and pmid
    assert state in {MessageState.SENT, MessageState.DELIVERED, MessageState.UNDELIVERED}
    assert harness.sent() == [harness.sent()[0]] and phone[-4:] in harness.sent()[0]


def test_uncertain_send_is_looked_up_not_resent(harness: Harness, world: World) -> None:
    harness.fault(Fault.UNCERTAIN_SENT)
    stats = world.dispatcher.run_batch()
    harness.fault(None)
    world.dispatcher.run(until_empty=True)
    [(_, state, pmid, _, _)] = world.messages()
    assert stats.by_outcome == {"found": 1}
    assert state != MessageState.QUEUED and pmid
    assert len(harness.sent()) == 1


def test_send_cut_by_a_crash_is_reconciled_once(harness: Harness, world: World) -> None:
    """Claimed and handed over, then the process died before recording it."""
    [claimed] = delivery.claim_due(world.core.engine, now=world.clock(), limit=10)
    body = delivery.bodies(world.core.engine, [claimed.body_id])[claimed.body_id]
    name, params = delivery.body_templates(world.core.engine, [claimed.body_id])[claimed.body_id]
    msg = OutboundMessage(
        claimed.id,
        claimed.phone,
        body,
        claimed.carrier,
        claimed.segments,
        template=name,
        params=load_params(params, world.provider.name),
    )
    accepted = world.provider.send(msg)
    world.clock.now += dt.timedelta(hours=1)
    stats = world.dispatcher.run(until_empty=True)
    [(_, state, pmid, _, _)] = world.messages()
    assert stats.by_outcome == {"found": 1}
    assert pmid == accepted.provider_message_id and state != MessageState.QUEUED
    assert len(harness.sent()) == 1


def test_permanent_error_fails_the_message(harness: Harness, world: World) -> None:
    harness.fault(Fault.PERMANENT)
    stats = world.dispatcher.run(until_empty=True)
    [(_, state, pmid, attempts, code)] = world.messages()
    assert (state, pmid, attempts, stats.failed) == (MessageState.FAILED, None, 1, 1)
    catalogue = provider_class(world.settings.provider).catalogue(world.settings.config_dir)
    assert code is not None and catalogue[code].kind == "permanent"
    assert harness.sent() == []


def test_transient_error_retries_then_sends_once(harness: Harness, world: World) -> None:
    harness.fault(Fault.TRANSIENT)
    first = world.dispatcher.run_batch()
    [(_, state, _, attempts, code)] = world.messages()
    assert (first.retried, state, attempts) == (1, MessageState.QUEUED, 1)
    catalogue = provider_class(world.settings.provider).catalogue(world.settings.config_dir)
    assert code is not None and catalogue[code].kind == "transient"
    harness.fault(None)
    world.clock.now += dt.timedelta(minutes=5)
    world.dispatcher.run(until_empty=True)
    [(_, state, pmid, attempts, _)] = world.messages()
    assert state != MessageState.QUEUED and pmid and attempts == 2
    assert len(harness.sent()) == 1


def test_opt_out_error_records_the_opt_out(harness: Harness, world: World) -> None:
    harness.fault(Fault.OPT_OUT)
    stats = world.dispatcher.run(until_empty=True)
    [(phone, state, _, _, _)] = world.messages()
    assert (state, stats.opted_out) == (MessageState.FAILED, 1)
    with Session(world.core.engine) as s:
        assert s.scalars(select(OptOut.source).where(OptOut.phone == phone)).all() == ["provider"]


def test_campaign_stopping_error_pauses_the_occurrence(harness: Harness, world: World) -> None:
    harness.fault(Fault.HALT)
    stats = world.dispatcher.run(until_empty=True)
    [(_, state, pmid, _, _)] = world.messages()
    assert (state, pmid, stats.halted, stats.failed) == (MessageState.QUEUED, None, 1, 0)
    with Session(world.core.engine) as s:
        assert s.scalars(select(Occurrence.paused)).all() == [True]
    assert harness.sent() == []


def test_receipts_duplicated_and_out_of_order(harness: Harness, settings: Settings) -> None:
    w = World(harness, settings, 12)
    try:
        w.dispatcher.run(until_empty=True)
        final = harness.push_receipts(w.core)
        assert set(final.values()) >= {
            DeliveryStatus.DELIVERED,
            DeliveryStatus.UNDELIVERED,
        }
        rows = w.messages()
        assert len(rows) == 12 == len(final)
        for _, state, pmid, _, _ in rows:
            assert pmid is not None and state == MessageState(final[pmid].value)
        with Session(w.core.engine) as s:
            delivered = s.scalar(select(func.sum(SendCounter.delivered)))
            sent = s.scalar(select(func.sum(SendCounter.sent)))
            attempts = s.scalar(select(func.count()).select_from(Attempt))
        assert sent == 12 == attempts
        assert delivered == sum(1 for st in final.values() if st == DeliveryStatus.DELIVERED)
    finally:
        w.close()


def test_batched_sends_give_each_number_its_own_result(settings: Settings, tmp_path: Path) -> None:
    """A gateway taking several numbers per call (issue 14's SendBatchSms, SendSms to 200):
    the dispatcher hands over chunks of max_batch, and one number's error is that number's."""
    harness = DryRunHarness(tmp_path)
    w = World(harness, settings, 12)
    try:
        w.dispatcher.close()
        s = w.settings
        w.provider = DryRunProvider(s.dryrun, s.dryrun_log_file, max_batch=5)
        harness._provider = w.provider
        w.dispatcher = build_dispatcher(w.core, w.provider)
        w.provider.inject(DryRunFault.TRANSIENT, DryRunFault.PERMANENT)
        stats = w.dispatcher.run(until_empty=True)
        assert (len(harness.sent()), stats.failed, stats.retried) == (10, 1, 1)
        w.clock.now += dt.timedelta(seconds=5)  # the busy number's Retry-After
        w.dispatcher.run(until_empty=True)
        rows = w.messages()
        assert len(set(harness.sent())) == len(harness.sent()) == 11
        assert sorted(r[1] for r in rows).count(MessageState.FAILED) == 1
        assert all(r[2] for r in rows if r[1] != MessageState.FAILED)
    finally:
        w.close()
