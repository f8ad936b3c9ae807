"""Real `pingan dispatch` processes against the fake Tencent API (its own process): a dispatcher
killed with SIGKILL mid-batch and restarted sends no number twice, and three dispatchers on
PostgreSQL drain one outbox with no duplicate (both counted at the fake, per number)."""

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

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.models import Message, MessageState
from scheduler.testing.fake_tencent import SDK_APP_ID, SECRET_ID, SECRET_KEY, SIGN_NAME
from tests.factories import add_recipients
from tests.integration.test_web import _free_port

ROOT = Path(__file__).resolve().parents[2]
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
CMD = [sys.executable, "-m", "scheduler", "dispatch", "--until-empty", "--format", "json"]


def _stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/_fake/stats", timeout=10) as resp:
        data: dict[str, int] = json.load(resp)
    return data


def _start_fake(*args: str) -> tuple[subprocess.Popen[str], str]:
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scheduler.testing.fake_tencent",
            "--port",
            str(_free_port()),
            *args,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fake.stdout is not None
    return fake, fake.stdout.readline().strip()


def _stop(fake: subprocess.Popen[str]) -> None:
    fake.terminate()
    fake.wait(timeout=30)
    if fake.stdout is not None:
        fake.stdout.close()


def _env(core: Core, base: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATABASE_URL=core.settings.effective_database_url,
        PINGAN_DATA_DIR=str(core.settings.data_dir),
        PINGAN_PROVIDER="tencent",
        PINGAN_TENCENT__SECRET_ID=SECRET_ID,
        PINGAN_TENCENT__SECRET_KEY=SECRET_KEY,
        PINGAN_TENCENT__SDK_APP_ID=SDK_APP_ID,
        PINGAN_TENCENT__SIGN_NAME=SIGN_NAME,
        PINGAN_TENCENT__ENDPOINT=base.removeprefix("http://"),
        PINGAN_TENCENT__PROTOCOL="http",
        # The fake reports at once: a look-up finding nothing need not wait for a late report.
        PINGAN_TENCENT__REPORT_WAIT_SECONDS="1",
        PINGAN_SENDING_HOURS="00:00-23:59",
        PINGAN_LOG_FORMAT="json",
        PINGAN_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


def _states(core: Core) -> dict[MessageState, int]:
    with Session(core.engine) as s:
        rows = s.execute(select(Message.state, func.count()).group_by(Message.state)).all()
    return {row[0]: row[1] for row in rows}


def test_killed_dispatcher_resumes_without_sending_a_number_twice(core: Core) -> None:
    n = 1500
    add_recipients(core.engine, core.district, n)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    # The fake holds its answers (after accepting) once a third is sent: the dispatcher is then
    # certainly waiting on SendSms with batches marked `sending`, accepted at Tencent.
    fake, base = _start_fake("--hold-after", str(n // 3))
    try:
        env = _env(core, base, PINGAN_DISPATCH__BATCH_SIZE="200", PINGAN_DISPATCH__CONCURRENCY="2")
        first = subprocess.Popen(
            CMD, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _stats(base)["held"] < 1:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert 0 < _stats(base)["created"] < n
        assert _states(core).get(MessageState.SENDING, 0) > 0  # the kill cut a batch in half
        urllib.request.urlopen(
            urllib.request.Request(base + "/_fake/release", data=b"", method="POST"), timeout=10
        ).close()
        env["PINGAN_DISPATCH__STALE_SENDING_SECONDS"] = "0"  # the killed one is not coming back
        done = subprocess.run(CMD, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        stats = _stats(base)
    finally:
        _stop(fake)
    assert stats["duplicates"] == 0
    assert stats["created"] == n
    assert result["outcomes"].get("found", 0) > 0  # the cut batch was looked up, not resent
    assert _states(core) == {MessageState.SENT: n}


def test_three_dispatchers_drain_one_outbox_without_duplicates(core: Core) -> None:
    if core.engine.dialect.name != "postgresql":
        pytest.skip("several dispatchers need PostgreSQL's SKIP LOCKED claims")
    n = 3000
    add_recipients(core.engine, core.district, n)
    assert core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY).queued == n
    # One SendSms per claimed batch of 20, each answered in 150 ms: one dispatcher alone would
    # take over 20 s, so the three (started seconds apart on a loaded machine, each importing
    # the application) each get a share, and their claims truly overlap.
    fake, base = _start_fake("--latency-ms", "150")
    try:
        env = _env(
            core,
            base,
            PINGAN_DISPATCH__BATCH_SIZE="20",
            PINGAN_DISPATCH__CONCURRENCY="2",
            PINGAN_DISPATCH__RATE_PER_SECOND="100000",
        )
        workers = [
            subprocess.Popen(
                CMD,
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
            out, _ = w.communicate(timeout=600)
            assert w.returncode == 0
            results.append(json.loads(out))
        stats = _stats(base)
    finally:
        _stop(fake)
    assert stats["created"] == n
    assert stats["duplicates"] == 0
    assert sum(r["sent"] for r in results) == n
    assert all(r["sent"] > 0 for r in results), results  # all three took a share
    assert _states(core) == {MessageState.SENT: n}
