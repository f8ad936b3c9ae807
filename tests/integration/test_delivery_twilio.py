"""End to end against the fake Twilio: failures, retries, no duplicates, callbacks applied."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.dispatcher import Dispatcher
from scheduler.models import Attempt, Message, MessageState, SendCounter
from scheduler.providers import make_provider
from scheduler.settings import DispatchSettings, Settings, TwilioSettings
from scheduler.simulation import ManualClock
from scheduler.testing.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeConfig, running_fake_twilio
from scheduler.web import HttpServer, create_app
from tests.factories import add_recipients
from tests.integration.test_web import _free_port

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)
PUBLIC = "https://pingan.example.org"
N = 400


def test_twilio_end_to_end_with_faults_and_callbacks(settings: Settings) -> None:
    config = FakeConfig(
        fail_429=0.10,
        permanent={"21211": 0.02},
        fail_500_after_create=0.02,
        timeout_after_create=0.01,
        timeout_seconds=1.0,
        undelivered_share=0.1,
    )
    with running_fake_twilio(config) as fake:
        port = _free_port()
        s = settings.model_copy(
            update={
                "provider": "twilio",
                "public_base_url": PUBLIC,
                "http_port": port,
                "twilio": TwilioSettings(
                    account_sid=ACCOUNT_SID,
                    auth_token=SecretStr(AUTH_TOKEN),
                    messaging_service_sid="MG" + "1" * 32,
                    base_url=fake.base_url,
                    timeout_seconds=0.5,
                ),
                "dispatch": DispatchSettings(
                    concurrency=8, backoff_base_seconds=0, max_attempts=50, batch_size=100
                ),
            }
        )
        clock = ManualClock(MONDAY + dt.timedelta(minutes=5))
        core = Core(s, clock=clock)
        add_recipients(core.engine, core.district, N)
        core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
        dispatcher = Dispatcher(core.engine, make_provider(s), s, clock=clock)
        for _ in range(20):
            dispatcher.run(until_empty=True)
            clock.set(clock() + dt.timedelta(minutes=1))
        dispatcher.close()

        with Session(core.engine) as db:
            states = dict(
                db.execute(select(Message.state, func.count()).group_by(Message.state)).all()
            )
            retried = db.scalar(
                select(func.count(func.distinct(Attempt.message_id))).where(
                    Attempt.outcome == "transient"
                )
            )
        assert sum(states.values()) == N
        assert set(states) <= {MessageState.SENT, MessageState.FAILED}, states
        assert fake.duplicates() == []
        assert states[MessageState.SENT] == fake.created_count()
        assert 0 < states.get(MessageState.FAILED, 0) < N * 0.1
        assert retried and retried > N * 0.05  # 429s were retried and then went through

        server = HttpServer(create_app(core), "127.0.0.1", port)
        server.start()
        try:
            import time

            time.sleep(0.5)
            posts = fake.post_status_callbacks(
                f"http://127.0.0.1:{port}", duplicate_share=0.3, shuffle=True, bad_signatures=1
            )
        finally:
            server.stop()
        assert sorted(code for *_, code in posts).count(403) == 1
        good_final = {
            sid: status
            for sid, status, code in posts
            if code == 200 and status in ("delivered", "undelivered")
        }
        with Session(core.engine) as db:
            rows = db.execute(
                select(Message.provider_message_id, Message.state).where(
                    Message.provider_message_id.is_not(None)
                )
            ).all()
            delivered_counter = db.scalar(select(func.sum(SendCounter.delivered)))
        for sid, state in rows:
            assert state == MessageState(good_final.get(sid, "sent")), sid
        assert delivered_counter == sum(1 for _, st in rows if st == MessageState.DELIVERED)
        core.close()
