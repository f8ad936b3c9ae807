"""Every way a refusal arrives cancels what is queued: the operator API and a provider status
callback (30004) on the real HTTP server; the cancellations counted by `pingan delivery stats`."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.models import Message, MessageState, OptOut
from scheduler.store import delivery
from scheduler.store.delivery import Outcome
from tests.factories import add_recipients
from tests.integration.test_web import MONDAY, TZ, _signed, web  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[2]


def _states(core: Core) -> dict[str, list[tuple[MessageState, str | None]]]:
    out: dict[str, list[tuple[MessageState, str | None]]] = {}
    with Session(core.engine) as s:
        for m in s.scalars(select(Message).order_by(Message.id)):
            out.setdefault(m.phone, []).append((m.state, m.error_code))
    return out


def test_api_and_status_callback_refusals_cancel_queued_messages(
    web: tuple[Core, str],  # noqa: F811
) -> None:
    core, base = web
    add_recipients(core.engine, core.district, 5)
    planner = core.planner()
    planner.fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    planner.fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY + dt.timedelta(days=7))
    # One message of resident 0 went out; the carrier then reports it blocked (30004).
    (first,) = delivery.claim_due(core.engine, now=MONDAY, limit=1)
    assert first.phone == "13800000000"
    delivery.record_outcomes(
        core.engine,
        [Outcome(first, MessageState.SENT, MONDAY, "sent", "twilio", provider_message_id="SMb1")],
        tz=TZ,
    )
    path = "/webhooks/twilio/status"
    form = {
        "MessageSid": "SMb1",
        "MessageStatus": "undelivered",
        "ErrorCode": "30004",
        "To": "+8613800000000",
    }
    assert httpx.post(base + path, data=form, headers=_signed(path, form)).status_code == 200
    r = httpx.post(base + "/api/opt-outs", json={"phones": ["186 0000 0001"], "reason": "电话"})
    assert r.status_code == 200 and r.json()["new"] == 1
    states = _states(core)
    assert states["13800000000"] == [
        (MessageState.UNDELIVERED, "30004"),
        (MessageState.CANCELLED, "opted_out"),
    ]
    assert states["18600000001"] == [(MessageState.CANCELLED, "opted_out")] * 2
    for phone in ("18900000002", "13800000003", "18600000004"):
        assert states[phone] == [(MessageState.QUEUED, None)] * 2
    with Session(core.engine) as s:
        sources = {o.phone: (o.source, o.reason) for o in s.scalars(select(OptOut))}
    assert sources == {
        "13800000000": ("provider", "error 30004"),
        "18600000001": ("api", "电话"),
    }

    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATABASE_URL=core.settings.effective_database_url,
        PINGAN_DATA_DIR=str(core.settings.data_dir),
        PINGAN_LOG_FORMAT="json",
    )

    def stats(*args: str) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-m", "scheduler", "delivery", "stats", "--format", "json", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        data: dict[str, object] = json.loads(done.stdout)
        return data

    overall = stats()
    (row,) = overall["rows"]  # type: ignore[misc]
    # Cancelled messages never went out: shown, but neither pending nor in the total sent.
    assert row["cancelled"] == 3 and row["queued"] == 6 and row["pending"] == 6
    assert row["total"] == 1
    errors = {e["code"]: e for e in overall["top_errors"]}  # type: ignore[attr-defined]
    assert errors["opted_out"]["count"] == 3
    assert "退订" in errors["opted_out"]["meaning"]
    by_reason = {r["key"]: r for r in stats("--by", "error")["rows"]}  # type: ignore[attr-defined]
    assert by_reason["opted_out"]["cancelled"] == 3
    assert by_reason["30004"]["undelivered"] == 1
