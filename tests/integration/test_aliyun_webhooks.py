"""Alibaba Cloud's pushes on the real HTTP app (uvicorn on 127.0.0.1): the token and the
address allow-list guard the unsigned routes, receipts land, a reply opts the number out."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.dispatcher import build_dispatcher
from scheduler.models import Message, MessageState, OptOut
from scheduler.settings import AliyunSettings, DispatchSettings, Settings
from scheduler.testing.fake_aliyun import FakeAliyun, FakeConfig, running_fake_aliyun
from scheduler.web import HttpServer, create_app
from tests.factories import add_recipients
from tests.integration.test_web import _free_port

TOKEN = "push-token"
MONDAY = dt.datetime(2022, 10, 10, 9, 5, tzinfo=ZoneInfo("Asia/Shanghai"))


def _aliyun(fake: FakeAliyun, **extra: object) -> AliyunSettings:
    return AliyunSettings(
        access_key_id="AK",
        access_key_secret=SecretStr("secret"),
        sign_name="平安上虞",
        endpoint=fake.endpoint,
        protocol="http",
        timeout_seconds=2,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def fake() -> Iterator[FakeAliyun]:
    with running_fake_aliyun(FakeConfig(undelivered_share=0.3)) as f:
        yield f


def _serve(settings: Settings) -> tuple[Core, HttpServer, str]:
    port = _free_port()
    core = Core(settings.model_copy(update={"http_port": port}), clock=lambda: MONDAY)
    server = HttpServer(create_app(core), "127.0.0.1", port)
    server.start()
    time.sleep(0.3)
    return core, server, f"http://127.0.0.1:{port}/webhooks/aliyun"


def _post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, object]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body, ensure_ascii=False).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


def test_without_a_token_configured_pushes_are_refused(
    settings: Settings, fake: FakeAliyun
) -> None:
    core, server, base = _serve(settings.model_copy(update={"aliyun": _aliyun(fake)}))
    try:
        code, body = _post(base + "/status?token=anything", [])
        assert code == 503 and "PINGAN_ALIYUN__WEBHOOK_TOKEN" in str(body)
    finally:
        server.stop()
        core.close()


def test_token_and_allow_list_guard_the_routes(settings: Settings, fake: FakeAliyun) -> None:
    reply = [{"phone_number": "13800000001", "content": "TD", "send_time": "2022-10-10 09:00:00"}]
    aliyun = _aliyun(fake, webhook_token=SecretStr(TOKEN))
    core, server, base = _serve(settings.model_copy(update={"aliyun": aliyun}))
    try:
        assert _post(base + "/inbound?token=wrong", reply)[0] == 403
        assert _post(base + "/inbound", reply)[0] == 403
        # A malformed push from a trusted sender is a 422, not a 500.
        assert _post(base + f"/status?token={TOKEN}", {"not": "a list"})[0] == 422
        assert _post(base + "/inbound", reply, {"X-Pingan-Token": TOKEN}) == (
            200,
            {"code": 0, "msg": "成功"},
        )
        with Session(core.engine) as s:
            assert s.scalars(select(OptOut.phone)).all() == ["13800000001"]
    finally:
        server.stop()
        core.close()
    # The same token from an address outside the allow-list.
    aliyun = _aliyun(fake, webhook_token=SecretStr(TOKEN), webhook_allow_ips=["10.0.0.0/8"])
    core, server, base = _serve(settings.model_copy(update={"aliyun": aliyun}))
    try:
        assert _post(base + f"/inbound?token={TOKEN}", reply)[0] == 403
    finally:
        server.stop()
        core.close()


def test_pushed_receipts_and_a_reply_reach_the_messages(
    settings: Settings, fake: FakeAliyun
) -> None:
    """The gateway's own pushes, as the fake sends them after a real dispatch."""
    aliyun = _aliyun(fake, webhook_token=SecretStr(TOKEN))
    s = settings.model_copy(
        update={
            "provider": "aliyun",
            "aliyun": aliyun,
            "dispatch": DispatchSettings(concurrency=2, batch_size=40),
        }
    )
    core, server, base = _serve(s)
    try:
        add_recipients(core.engine, core.district, 30)
        core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
        d = build_dispatcher(core)
        stats = d.run(until_empty=True)
        d.close()
        assert stats.sent == 30 and fake.sent_count() == 30
        codes = fake.push_receipts(base + f"/status?token={TOKEN}", duplicate_share=0.5)
        assert set(codes) == {200}
        with Session(core.engine) as sess:
            rows = sess.execute(select(Message.phone, Message.state)).all()
        delivered = {m.phone for m in fake.messages if m.delivered}
        for phone, state in rows:
            wanted = MessageState.DELIVERED if phone in delivered else MessageState.UNDELIVERED
            assert state == wanted
        phone = rows[0][0]
        assert fake.push_reply(phone, "退订", base + f"/inbound?token={TOKEN}") == 200
        with Session(core.engine) as sess:
            assert sess.scalars(select(OptOut.source).where(OptOut.phone == phone)).all() == [
                "reply"
            ]
    finally:
        server.stop()
        core.close()
