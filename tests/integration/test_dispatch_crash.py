"""A dispatcher killed mid-send (a real process, SIGKILL) and restarted: nothing sent twice,
nothing lost."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.models import Message, MessageState
from scheduler.testing.fake_twilio import ACCOUNT_SID, AUTH_TOKEN
from tests.factories import add_recipients
from tests.integration.test_web import _free_port

ROOT = Path(__file__).resolve().parents[2]
N = 3000


def _stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/_fake/stats", timeout=10) as resp:
        data: dict[str, int] = json.load(resp)
    return data


def test_killed_dispatcher_resumes_without_duplicates(core: Core) -> None:
    add_recipients(core.engine, core.district, N)
    monday = dt.datetime(2022, 10, 10, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), monday)
    port = _free_port()
    fake = subprocess.Popen(
        # The fake holds its answers once a third is created: the dispatcher is then certainly
        # waiting on Twilio with a batch marked `sending`, some of it created, when killed.
        [
            sys.executable,
            "-m",
            "scheduler.testing.fake_twilio",
            "--port",
            str(port),
            "--hold-after",
            str(N // 3),
        ],
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
            # Batches small so several commit before the hold.
            PINGAN_DISPATCH__BATCH_SIZE="200",
            PINGAN_DISPATCH__CONCURRENCY="4",
            PINGAN_LOG_FORMAT="json",
            PINGAN_LOG_LEVEL="WARNING",
        )
        cmd = [sys.executable, "-m", "scheduler", "dispatch", "--until-empty", "--format", "json"]
        first = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _stats(base)["held"] < 1:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        with Session(core.engine) as s:
            left_sending = s.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.state == MessageState.SENDING)
            )
        assert 0 < _stats(base)["created"] < N
        assert left_sending and left_sending > 0  # the kill cut a batch in half
        release = urllib.request.Request(base + "/_fake/release", data=b"", method="POST")
        urllib.request.urlopen(release, timeout=10).close()

        env["PINGAN_DISPATCH__STALE_SENDING_SECONDS"] = "0"  # the killed one is not coming back
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        stats = _stats(base)
    finally:
        fake.terminate()
        fake.wait(timeout=30)
        if fake.stdout is not None:
            fake.stdout.close()
    assert stats["duplicates"] == 0
    assert stats["created"] == N
    with Session(core.engine) as s:
        states = dict(s.execute(select(Message.state, func.count()).group_by(Message.state)).all())
    assert states == {MessageState.SENT: N}
