"""The aliyun provider's guarantees with real processes: a dispatcher killed (SIGKILL) while
waiting on the gateway mid-batch and restarted sends no number twice; three dispatchers on
PostgreSQL drain one outbox with no duplicate. Counted at the fake (scheduler/testing/
fake_aliyun.py, its own process), sent through the real SDK."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.models import Message, MessageState
from tests.factories import add_recipients
from tests.integration.test_web import _free_port

ROOT = Path(__file__).resolve().parents[2]
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
DISPATCH = [sys.executable, "-m", "scheduler", "dispatch", "--until-empty", "--format", "json"]


def _stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/_fake/stats", timeout=10) as resp:
        data: dict[str, Any] = json.load(resp)
    return data


@contextmanager
def _fake(*args: str) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler.testing.fake_aliyun", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def _env(core: Core, base: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATABASE_URL=core.settings.effective_database_url,
        PINGAN_DATA_DIR=str(core.settings.data_dir),
        PINGAN_PROVIDER="aliyun",
        PINGAN_ALIYUN__ACCESS_KEY_ID="AK-test",
        PINGAN_ALIYUN__ACCESS_KEY_SECRET="AK-secret",
        PINGAN_ALIYUN__SIGN_NAME="平安上虞",
        PINGAN_ALIYUN__ENDPOINT=base.removeprefix("http://"),
        PINGAN_ALIYUN__PROTOCOL="http",
        PINGAN_SENDING_HOURS="00:00-23:59",
        PINGAN_LOG_FORMAT="json",
        PINGAN_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


def _states(core: Core) -> dict[MessageState, int]:
    with Session(core.engine) as s:
        rows = s.execute(select(Message.state, func.count()).group_by(Message.state)).all()
    return dict(rows)  # type: ignore[arg-type]


def test_killed_dispatcher_resumes_without_sending_a_number_twice(core: Core) -> None:
    n = 2000
    add_recipients(core.engine, core.district, n)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    # Once a third is accepted the fake holds its answers: the dispatcher is then waiting on
    # the gateway with batches `sending`, their numbers accepted, when it is killed.
    with _fake("--hold-after", str(n // 3)) as base:
        env = _env(core, base, PINGAN_DISPATCH__BATCH_SIZE="300", PINGAN_DISPATCH__CONCURRENCY="3")
        first = subprocess.Popen(
            DISPATCH, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _stats(base)["held"] < 1:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        accepted_before = _stats(base)["sent"]
        assert 0 < accepted_before < n
        assert _states(core).get(MessageState.SENDING, 0) > 0  # the kill cut a batch in half
        urllib.request.urlopen(
            urllib.request.Request(base + "/_fake/release", data=b"", method="POST"), timeout=10
        ).close()

        env["PINGAN_DISPATCH__STALE_SENDING_SECONDS"] = "0"  # the killed one is not coming back
        done = subprocess.run(
            DISPATCH, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        stats = _stats(base)
    assert stats["duplicates"] == 0 and stats["most_to_one_number"] == 1
    assert stats["sent"] == n == stats["numbers"]
    # What the killed dispatcher had handed over was found by lookup, not sent again.
    assert result["outcomes"].get("found", 0) > 0
    assert _states(core) == {MessageState.SENT: n}


@pytest.mark.slow
def test_three_dispatchers_drain_one_outbox_without_duplicates(core: Core) -> None:
    if core.engine.dialect.name != "postgresql":
        pytest.skip("several dispatchers need PostgreSQL's SKIP LOCKED claims")
    n = 6000
    add_recipients(core.engine, core.district, n)
    assert core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY).queued == n
    # One gateway call per claimed batch of 20, each answered in 100 ms: one dispatcher alone
    # would take half a minute, so the three (started seconds apart on a loaded machine, each
    # importing the application) each get a share.
    with _fake("--latency-ms", "100") as base:
        env = _env(
            core,
            base,
            PINGAN_DISPATCH__RATE_PER_SECOND="100000",
            PINGAN_DISPATCH__CONCURRENCY="4",
            PINGAN_DISPATCH__BATCH_SIZE="20",
        )
        workers = [
            subprocess.Popen(
                DISPATCH,
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
    assert stats["sent"] == n == stats["numbers"]
    assert stats["duplicates"] == 0
    assert sum(r["sent"] for r in results) == n
    assert all(r["sent"] > 0 for r in results), results  # all three took a share
    assert _states(core) == {MessageState.SENT: n}
