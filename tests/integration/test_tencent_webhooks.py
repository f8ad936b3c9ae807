"""Tencent's pushes to the real app on uvicorn (127.0.0.1), posted by the fake as Tencent posts
them: the token and the allow-list guard both routes, receipts land by SerialNo, a reply that
refuses records an opt-out through the reply rules."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from zoneinfo import ZoneInfo

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.dispatcher import build_dispatcher
from scheduler.models import Message, MessageState, OptOut
from scheduler.settings import Settings, TencentSettings
from scheduler.testing import fake_tencent
from scheduler.testing.fake_tencent import FakeConfig, FakeTencent, running_fake_tencent
from scheduler.web import HttpServer, create_app
from tests.factories import add_recipients
from tests.integration.test_web import _free_port

MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
TOKEN = "s3cret-token"


def _settings(base: Settings, fake: FakeTencent, port: int, **extra: object) -> Settings:
    cfg: dict[str, object] = {
        "secret_id": fake_tencent.SECRET_ID,
        "secret_key": SecretStr(fake_tencent.SECRET_KEY),
        "sdk_app_id": fake_tencent.SDK_APP_ID,
        "sign_name": fake_tencent.SIGN_NAME,
        "endpoint": fake.endpoint,
        "protocol": "http",
        "webhook_token": SecretStr(TOKEN),
        **extra,
    }
    return base.model_copy(
        update={
            "provider": "tencent",
            "http_port": port,
            "sending_hours": "00:00-23:59",
            "tencent": TencentSettings(**cfg),  # type: ignore[arg-type]
        }
    )


@contextmanager
def _serving(core: Core) -> Iterator[str]:
    server = HttpServer(create_app(core), "127.0.0.1", core.settings.http_port)
    server.start()
    try:
        time.sleep(0.4)
        yield f"http://127.0.0.1:{core.settings.http_port}/webhooks/tencent"
    finally:
        server.stop()


def _post(url: str, body: object) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


def test_pushed_receipts_and_replies(settings: Settings) -> None:
    with running_fake_tencent(FakeConfig(undelivered_share=0.3, seed=4)) as fake:
        port = _free_port()
        core = Core(_settings(settings, fake, port), clock=lambda: MONDAY + dt.timedelta(hours=1))
        try:
            add_recipients(core.engine, core.district, 20)
            core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
            d = build_dispatcher(core)
            try:
                assert d.run(until_empty=True).sent == 20
            finally:
                d.close()
            with _serving(core) as hooks:
                # Tencent's pushes carry the token in the URL set in its console.
                assert _post(f"{hooks}/status", [])[0] == 403
                assert _post(f"{hooks}/status?token=wrong", [])[0] == 403
                codes = fake.post_receipts(f"{hooks}/status?token={TOKEN}", duplicate_share=0.5)
                assert set(codes) == {200}
                phone = fake.sent_numbers()[0]
                assert fake.post_reply(f"{hooks}/reply?token={TOKEN}", phone, "收到，谢谢") == 200
                assert fake.post_reply(f"{hooks}/reply?token={TOKEN}", phone, "退订") == 200
                assert _post(f"{hooks}/reply?token={TOKEN}", {"mobile": "1"})[0] == 422
            with Session(core.engine) as s:
                rows = s.execute(select(Message.provider_message_id, Message.state)).all()
                opted = s.scalars(select(OptOut.phone).where(OptOut.source == "reply")).all()
            with fake.lock:
                final = {sid: m.final for sid, m in fake.messages.items()}
            expected = {"SUCCESS": MessageState.DELIVERED, "FAIL": MessageState.UNDELIVERED}
            assert {row[0]: row[1] for row in rows} == {
                sid: expected[f] for sid, f in final.items()
            }
            assert set(final.values()) == {"SUCCESS", "FAIL"}
            assert opted == [phone.removeprefix("+86")]
        finally:
            core.close()


def test_no_token_configured_refuses_everything(settings: Settings) -> None:
    with running_fake_tencent() as fake:
        core = Core(_settings(settings, fake, _free_port(), webhook_token=SecretStr("")))
        try:
            with _serving(core) as hooks:
                status, body = _post(f"{hooks}/status?token=", [])
                assert status == 503 and "PINGAN_TENCENT__WEBHOOK_TOKEN" in str(body)
                assert _post(f"{hooks}/reply", {"mobile": "13800000000", "text": "退订"})[0] == 503
            with Session(core.engine) as s:
                assert s.scalars(select(OptOut.phone)).all() == []
        finally:
            core.close()


def test_allow_list_refuses_other_addresses(settings: Settings) -> None:
    with running_fake_tencent() as fake:
        port = _free_port()
        core = Core(_settings(settings, fake, port, webhook_allow_ips=["10.0.0.0/8"]))
        try:
            with _serving(core) as hooks:
                status, body = _post(f"{hooks}/status?token={TOKEN}", [])
                assert status == 403 and "允许" in str(body)
        finally:
            core.close()
        core = Core(_settings(settings, fake, port, webhook_allow_ips=["127.0.0.0/8"]))
        try:
            with _serving(core) as hooks:
                assert _post(f"{hooks}/status?token={TOKEN}", []) == (
                    200,
                    {"result": 0, "errmsg": "OK"},
                )
        finally:
            core.close()
