"""On PostgreSQL, three dispatcher processes drain one outbox with no message sent twice."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.models import Message, MessageState
from scheduler.testing.fake_twilio import ACCOUNT_SID, AUTH_TOKEN
from tests.factories import add_recipients
from tests.integration.test_web import _free_port

ROOT = Path(__file__).resolve().parents[2]
N = 100_000


@pytest.mark.slow
def test_three_dispatchers_share_one_outbox(core: Core) -> None:
    if core.engine.dialect.name != "postgresql":
        pytest.skip("several dispatchers need PostgreSQL's SKIP LOCKED claims")
    add_recipients(core.engine, core.district, N)
    monday = dt.datetime(2022, 10, 10, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), monday).queued == N
    port = _free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "scheduler.testing.fake_twilio", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None
        base = fake.stdout.readline().strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
        env.update(
            PINGAN_DATABASE_URL=core.settings.effective_database_url,
            PINGAN_DATA_DIR=str(core.settings.data_dir),
            PINGAN_PROVIDER="twilio",
            PINGAN_TWILIO__ACCOUNT_SID=ACCOUNT_SID,
            PINGAN_TWILIO__AUTH_TOKEN=AUTH_TOKEN,
            PINGAN_TWILIO__MESSAGING_SERVICE_SID="MG" + "1" * 32,
            PINGAN_TWILIO__BASE_URL=base,
            PINGAN_SENDING_HOURS="00:00-23:59",
            PINGAN_DISPATCH__RATE_PER_SECOND="100000",
            PINGAN_DISPATCH__CONCURRENCY="8",
            PINGAN_LOG_FORMAT="json",
            PINGAN_LOG_LEVEL="WARNING",
        )
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "scheduler",
                    "dispatch",
                    "--until-empty",
                    "--format",
                    "json",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for _ in range(3)
        ]
        results = []
        for w in workers:
            out, _ = w.communicate(timeout=900)
            assert w.returncode == 0
            results.append(json.loads(out))
        with urllib.request.urlopen(base + "/_fake/stats", timeout=10) as resp:
            stats = json.load(resp)
    finally:
        fake.terminate()
        fake.wait(timeout=30)
        if fake.stdout is not None:
            fake.stdout.close()
    assert stats["created"] == N
    assert stats["duplicates"] == 0
    assert sum(r["sent"] for r in results) == N
    assert all(r["sent"] > 0 for r in results), results  # all three took a share
    with Session(core.engine) as s:
        sent = s.scalar(
            select(func.count()).select_from(Message).where(Message.state == MessageState.SENT)
        )
    assert sent == N
