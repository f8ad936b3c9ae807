"""The HTTP layer on a real socket (uvicorn on 127.0.0.1): webhooks, operator API, health."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from scheduler.core import Core
from scheduler.models import Message, MessageState, OptOut, SendCounter
from scheduler.settings import Settings, TwilioSettings
from scheduler.store import delivery
from scheduler.store.delivery import Outcome
from scheduler.web import HttpServer, create_app
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)
TOKEN = "test-auth-token"
PUBLIC = "https://pingan.example.org"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def web(settings: Settings) -> Iterator[tuple[Core, str]]:
    port = _free_port()
    s = settings.model_copy(
        update={
            "public_base_url": PUBLIC,
            "http_port": port,
            "twilio": TwilioSettings(account_sid="AC1", auth_token=SecretStr(TOKEN)),
        }
    )
    core = Core(s)
    server = HttpServer(create_app(core, health=lambda: {"scheduler": "active"}), "127.0.0.1", port)
    server.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(base + "/healthz", timeout=1)
            break
        except httpx.TransportError:
            import time

            time.sleep(0.05)
    yield core, base
    server.stop()
    core.close()


def _signed(path: str, params: dict[str, str], token: str = TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(PUBLIC + path, params)}


def _sent_message(core: Core, sid: str) -> int:
    add_recipients(core.engine, core.district, 3)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    claimed = delivery.claim_due(core.engine, now=MONDAY, limit=1)
    delivery.record_outcomes(
        core.engine,
        [Outcome(claimed[0], MessageState.SENT, MONDAY, "sent", "twilio", provider_message_id=sid)],
        tz=TZ,
    )
    return claimed[0].id


def _state(core: Core, mid: int) -> MessageState:
    with Session(core.engine) as s:
        msg = s.get(Message, mid)
        assert msg is not None
        return msg.state


def test_status_only_moves_forward_and_bad_signatures_change_nothing(
    web: tuple[Core, str],
) -> None:
    core, base = web
    mid = _sent_message(core, "SM0001")
    path = "/webhooks/twilio/status"
    delivered = {"MessageSid": "SM0001", "MessageStatus": "delivered", "To": "+8613800000000"}
    bad = httpx.post(base + path, data=delivered, headers=_signed(path, delivered, "wrong"))
    assert bad.status_code == 403
    assert _state(core, mid) == MessageState.SENT
    ok = httpx.post(base + path, data=delivered, headers=_signed(path, delivered))
    assert ok.json() == {"result": "applied"}
    late = {"MessageSid": "SM0001", "MessageStatus": "sent"}
    assert httpx.post(base + path, data=late, headers=_signed(path, late)).json() == {
        "result": "unchanged"
    }
    again = httpx.post(base + path, data=delivered, headers=_signed(path, delivered))
    assert again.json() == {"result": "unchanged"}
    assert _state(core, mid) == MessageState.DELIVERED
    with Session(core.engine) as s:
        assert s.scalar(select(func.sum(SendCounter.delivered))) == 1
        assert s.scalar(select(func.sum(SendCounter.sent))) == 1


def test_a_status_before_the_send_is_recorded_waits_for_it(web: tuple[Core, str]) -> None:
    core, base = web
    path = "/webhooks/twilio/status"
    early = {"MessageSid": "SM0002", "MessageStatus": "undelivered", "ErrorCode": "30003"}
    assert httpx.post(base + path, data=early, headers=_signed(path, early)).json() == {
        "result": "pending"
    }
    mid = _sent_message(core, "SM0002")
    assert _state(core, mid) == MessageState.UNDELIVERED


def test_refusal_reply_records_an_opt_out(web: tuple[Core, str]) -> None:
    core, base = web
    path = "/webhooks/twilio/inbound"
    for body, phone in (
        ("退订", "+8613800000001"),
        ("td", "+8613800000002"),
        ("谢谢", "+8613800000003"),
    ):
        form = {"From": phone, "Body": body, "MessageSid": "SMx"}
        r = httpx.post(base + path, data=form, headers=_signed(path, form))
        assert r.status_code == 200
        assert "<Response></Response>" in r.text
    with Session(core.engine) as s:
        assert set(s.scalars(select(OptOut.phone))) == {"13800000001", "13800000002"}


def test_api_opt_outs_and_health(web: tuple[Core, str]) -> None:
    _, base = web
    r = httpx.post(base + "/api/opt-outs", json={"phones": ["138 0000 0009", "12345"]})
    assert r.status_code == 422
    assert r.json()["recorded"] == 1
    assert len(r.json()["invalid"]) == 1
    health = httpx.get(base + "/healthz").json()
    assert health == {"database": "ok", "role": "leader", "scheduler": "active"}
