"""The declared, hardened HTTP API on a real socket (uvicorn on 127.0.0.1): auth by
construction, named tokens and the audit log, 422 for malformed requests, webhooks that refuse
without a secret, health, metrics, docs offline, reports without temporary leftovers."""

from __future__ import annotations

import datetime as dt
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi.routing import APIRoute
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from scheduler.console.security import verify_csrf
from scheduler.core import Core
from scheduler.models import FraudCase, MessageState, OptOut
from scheduler.settings import Settings, TwilioSettings
from scheduler.store import audit, delivery
from scheduler.store.delivery import Outcome
from scheduler.web import HttpServer, create_app
from scheduler.web.auth import ApiGuard
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)
PUBLIC = "https://pingan.example.org"
TOKENS = "alice=token-alice-1,bob=token-bob-2"
LEGACY = "token-legacy-3"
CASE = {
    "case_id": "C-001",
    "time": "2022-10-09T14:30",
    "amount": 12000,
    "town": "huanghu",
    "village": "qingbo",
}

Serve = Callable[..., Any]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serving(settings: Settings, **updates: Any) -> Iterator[tuple[Core, str]]:
    port = _free_port()
    core = Core(settings.model_copy(update={"public_base_url": PUBLIC, **updates}))
    server = HttpServer(
        create_app(core, health=lambda: {"scheduler": "standby"}), "127.0.0.1", port
    )
    server.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(base + "/openapi.json", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        yield core, base
    finally:
        server.stop()
        core.close()


@pytest.fixture
def tokens_api(settings: Settings) -> Iterator[tuple[Core, str]]:
    with _serving(settings, api_tokens=SecretStr(TOKENS), api_token=SecretStr(LEGACY)) as served:
        yield served


@pytest.fixture
def open_api(settings: Settings) -> Iterator[tuple[Core, str]]:
    with _serving(settings) as served:
        yield served


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _walk(routes: list[Any]) -> Iterator[Any]:
    """Every route, into included routers (FastAPI 0.165 keeps them nested)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _walk(inner.routes)
        else:
            yield route


def test_every_api_route_carries_the_guard(core: Core) -> None:
    app = create_app(core)
    routes = [r for r in _walk(app.routes) if isinstance(r, APIRoute)]
    # The walk sees every declared path, so no route can hide from it.
    assert set(app.openapi()["paths"]) <= {r.path for r in routes}
    api_routes = [r for r in routes if r.path.startswith("/api")]
    assert len(api_routes) >= 5
    for route in api_routes:
        guards = [d.call for d in route.dependant.dependencies if isinstance(d.call, ApiGuard)]
        assert guards, f"{route.path} has no ApiGuard"
    # The console's pages sit on its own router, every one behind its CSRF check (and each
    # page behind a login: tests/integration/test_console_http.py refuses an anonymous
    # session on every one).
    console = [r for r in routes if any(d.call is verify_csrf for d in r.dependant.dependencies)]
    assert {"/", "/login", "/logout"} <= {r.path for r in console}
    others = {r.path for r in routes} - {r.path for r in api_routes} - {r.path for r in console}
    assert others == {
        "/webhooks/twilio/status",
        "/webhooks/twilio/inbound",
        "/webhooks/aliyun/status",
        "/webhooks/aliyun/inbound",
        "/webhooks/tencent/status",
        "/webhooks/tencent/reply",
        "/healthz",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
    }


def test_every_api_route_refuses_a_caller_without_a_token(tokens_api: tuple[Core, str]) -> None:
    _, base = tokens_api
    calls = [
        ("GET", "/api/quota", None),
        ("GET", "/api/reports/monthly?month=2022-10", None),
        ("GET", "/api/reports/monthly?month=2022-10&format=xlsx", None),
        ("GET", "/api/audit", None),
        ("POST", "/api/opt-outs", {"phones": ["13800000009"]}),
        ("POST", "/api/cases", CASE),
    ]
    for method, path, body in calls:
        for headers in (
            {},
            _bearer("wrong"),
            {"Authorization": "Basic YWxpY2U6dG9rZW4="},
            {"Authorization": "token-alice-1"},
            {"Authorization": b"Bearer t\xf6ken"},
            {"Authorization": "Bearer 令牌".encode()},
        ):
            r = httpx.request(method, base + path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert r.json()["error"]
        r = httpx.request(method, base + path, json=body, headers=_bearer("token-alice-1"))
        assert r.status_code == 200, (path, r.text)


def test_changes_are_audited_by_token_name_and_peer(tokens_api: tuple[Core, str]) -> None:
    core, base = tokens_api
    r = httpx.post(
        base + "/api/opt-outs",
        json={"phones": ["138 0000 0009", "13800000010"], "reason": "电话投诉"},
        headers=_bearer("token-bob-2"),
    )
    assert r.json() == {"recorded": 2, "new": 2, "invalid": []}
    r = httpx.post(base + "/api/cases", json=[CASE], headers=_bearer(LEGACY))
    assert r.status_code == 200 and r.json()["inserted"] == 1
    httpx.get(base + "/api/quota", headers=_bearer("token-alice-1"))  # a read: not audited

    entries = audit.entries(core.engine)
    assert [(e.who, e.action, e.peer) for e in entries] == [
        ("default", "cases", "127.0.0.1"),
        ("bob", "opt-outs", "127.0.0.1"),
    ]
    assert entries[1].detail["phones"] == ["13800000009", "13800000010"]
    assert entries[0].detail["case_ids"] == ["C-001"]
    assert all(abs((e.at - dt.datetime.now(dt.UTC)).total_seconds()) < 60 for e in entries)
    shown = httpx.get(base + "/api/audit?who=bob", headers=_bearer("token-alice-1")).json()
    assert [e["detail"]["phones"] for e in shown] == [["138****0009", "138****0010"]]


def test_without_a_token_only_direct_loopback_callers(open_api: tuple[Core, str]) -> None:
    _, base = open_api
    assert httpx.get(base + "/api/quota").status_code == 200
    for header in (
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
    ):
        r = httpx.post(base + "/api/opt-outs", json={"phones": ["13800000009"]}, headers=header)
        assert r.status_code == 403, header
    other_peer = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    with other_peer:
        r = other_peer.get(base + "/api/quota")
        assert r.status_code == 403
        assert other_peer.get(base + "/healthz").status_code == 200
    core = open_api[0]
    with Session(core.engine) as s:
        assert s.scalar(select(func.count()).select_from(OptOut)) == 0


@pytest.mark.parametrize(
    ("path", "content", "where"),
    [
        ("/api/opt-outs", b'{"phones": ["13800000009"', "body"),  # invalid JSON
        ("/api/opt-outs", b'["13800000009"]', "body"),  # a list, not an object
        ("/api/opt-outs", b'{"phones": 13800000009}', "phones"),
        ("/api/opt-outs", b'{"phones": [13800000009]}', "phones"),
        ("/api/opt-outs", b'{"phones": ["1\\u00008"]}', "phones"),
        ("/api/opt-outs", b'{"phones": [], "source": ""}', "source"),
        ("/api/opt-outs", b'"just a string"', "body"),
        ("/api/opt-outs", b"", "body"),
        (
            "/api/cases",
            b'{"case_id": "c", "time": "2022-10-09T10:00", "amount": 1e400, '
            b'"town": "huanghu", "village": "qingbo"}',
            "amount",
        ),
        (
            "/api/cases",
            b'{"case_id": "c", "time": "2022-10-09T10:00", "amount": "1e400", '
            b'"town": "huanghu", "village": "qingbo"}',
            "amount",
        ),
        (
            "/api/cases",
            b'{"case_id": "c", "time": "9999-12-31T23:59-14:00", "amount": 1, '
            b'"town": "huanghu", "village": "qingbo"}',
            "time",
        ),
        (
            "/api/cases",
            b'{"case_id": "c", "time": "2022-10-09", "amount": -1, '
            b'"town": "huanghu", "village": "qingbo"}',
            "amount",
        ),
        ("/api/cases", b"[1, 2, 3]", "body"),
        ("/api/cases", b"{}", "case_id"),
    ],
)
def test_malformed_bodies_are_422_with_field_and_reason(
    open_api: tuple[Core, str], path: str, content: bytes, where: str
) -> None:
    core, base = open_api
    r = httpx.post(base + path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail and all(d["msg"] and d["type"] for d in detail)
    assert any(where in [str(p) for p in d["loc"]] for d in detail), detail
    with Session(core.engine) as s:
        assert s.scalar(select(func.count()).select_from(OptOut)) == 0
        assert s.scalar(select(func.count()).select_from(FraudCase)) == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/api/quota?on=2022-13-01", "on"),
        ("/api/quota?on=9999-12-31", "on"),
        ("/api/quota?week=W41", "week"),
        ("/api/reports/monthly?month=2022-13", "month"),
        ("/api/reports/monthly", "month"),
        ("/api/reports/monthly?month=2022-10&format=pdf", "format"),
        ("/api/reports/monthly?month=2022-10&town=atlantis", "town"),
        ("/api/audit?limit=100000", "limit"),
    ],
)
def test_bad_query_parameters_are_422(open_api: tuple[Core, str], query: str, field: str) -> None:
    _, base = open_api
    r = httpx.get(base + query)
    assert r.status_code == 422, r.text
    assert any(d["loc"][-1] == field for d in r.json()["detail"]), r.text


def test_a_case_in_an_unknown_village_is_rejected_by_index(open_api: tuple[Core, str]) -> None:
    _, base = open_api
    r = httpx.post(base + "/api/cases", json=[CASE, {**CASE, "village": "atlantis"}])
    assert r.status_code == 422
    assert [x["index"] for x in r.json()["rejected"]] == [1]


def _sign(url: str, form: dict[str, str], key: str) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(key).compute_signature(url, form)}


def test_webhooks_without_a_provider_secret_answer_503_and_change_nothing(
    open_api: tuple[Core, str],
) -> None:
    core, base = open_api
    form = {"From": "+8613800000001", "Body": "退订", "MessageSid": "SMx"}
    for path in ("/webhooks/twilio/inbound", "/webhooks/twilio/status"):
        for key in ("", "anything"):
            r = httpx.post(base + path, data=form, headers=_sign(PUBLIC + path, form, key))
            assert r.status_code == 503, r.text
    with Session(core.engine) as s:
        assert s.scalar(select(func.count()).select_from(OptOut)) == 0


def test_webhook_signature_is_checked_against_the_public_url(settings: Settings) -> None:
    twilio = TwilioSettings(account_sid="AC1", auth_token=SecretStr("secret-1"))
    with _serving(settings, twilio=twilio) as (core, base):
        path = "/webhooks/twilio/inbound"
        form = {"From": "+8613800000001", "Body": "退订", "MessageSid": "SMx"}
        local = httpx.post(base + path, data=form, headers=_sign(base + path, form, "secret-1"))
        assert local.status_code == 403
        with Session(core.engine) as s:
            assert s.scalar(select(func.count()).select_from(OptOut)) == 0
        ok = httpx.post(base + path, data=form, headers=_sign(PUBLIC + path, form, "secret-1"))
        assert ok.status_code == 200
        with Session(core.engine) as s:
            assert set(s.scalars(select(OptOut.phone))) == {"13800000001"}
        long_sid = {"MessageSid": "S" * 200, "MessageStatus": "delivered"}
        status = "/webhooks/twilio/status"
        r = httpx.post(
            base + status, data=long_sid, headers=_sign(PUBLIC + status, long_sid, "secret-1")
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["MessageSid"]


def test_xlsx_report_is_built_without_leaving_a_folder(
    open_api: tuple[Core, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base = open_api
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for _ in range(3):
        r = httpx.get(base + "/api/reports/monthly?month=2022-10&format=xlsx")
        assert r.status_code == 200
        assert r.content[:2] == b"PK"
        assert "attachment" in r.headers["Content-Disposition"]
    assert list(scratch.iterdir()) == []
    js = httpx.get(base + "/api/reports/monthly?month=2022-10").json()
    assert js["month"] == "2022-10" and js["form"]["header"][0] == "乡镇街道"


def test_healthz_is_503_when_the_database_does_not_answer(settings: Settings) -> None:
    dead = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"
    with _serving(settings, database_url=dead) as (_, base):
        r = httpx.get(base + "/healthz", timeout=30)
        assert r.status_code == 503
        assert r.json()["role"] == "standby"
        assert r.json()["database"].startswith("error")
        metrics = httpx.get(base + "/metrics", timeout=30)
        assert metrics.status_code == 200
        assert "pingan_database_up 0.0" in metrics.text


def test_metrics_count_from_the_database(settings: Settings) -> None:
    with _serving(settings) as (core, base):
        add_recipients(core.engine, core.district, 3)
        core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
        claimed = delivery.claim_due(core.engine, now=MONDAY, limit=2)
        delivery.record_outcomes(
            core.engine,
            [
                Outcome(claimed[0], MessageState.SENT, MONDAY, "sent", "twilio", "SM1"),
                Outcome(
                    claimed[1], MessageState.FAILED, MONDAY, "failed", "twilio", error_code="30007"
                ),
            ],
            tz=TZ,
        )
        core.clock = lambda: MONDAY + dt.timedelta(seconds=30)
        text = httpx.get(base + "/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("pingan_messages", (("state", "queued"),))] == 1
    assert samples[("pingan_messages", (("state", "sent"),))] == 1
    assert samples[("pingan_messages", (("state", "failed"),))] == 1
    assert samples[("pingan_messages", (("state", "delivered"),))] == 0
    assert samples[("pingan_send_rate_per_second", ())] == pytest.approx(1 / 60)
    assert samples[("pingan_provider_errors_total", (("code", "30007"),))] == 1
    assert samples[("pingan_expansion_duration_seconds_count", ())] == 1
    assert samples[("pingan_leader", ())] == 0  # this app's health says standby
    assert samples[("pingan_database_up", ())] == 1


def test_openapi_and_docs_work_offline(open_api: tuple[Core, str]) -> None:
    _, base = open_api
    schema = httpx.get(base + "/openapi.json").json()
    assert {"/api/opt-outs", "/api/cases", "/api/quota", "/api/reports/monthly"} <= set(
        schema["paths"]
    )
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    page = httpx.get(base + "/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assert "/static-offline-docs/swagger-ui-bundle.js" in page.text
    js = httpx.get(base + "/static-offline-docs/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
