"""`pingan dispatch --until-empty [--max-wait]` in a subprocess against the fake Twilio: it
waits for retries coming due, then says (exit 1, one line per state) what is left; a progress
bar on a terminal only; the dry-run provider unthrottled unless asked."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.dispatcher import Dispatcher
from scheduler.models import Message, MessageState
from scheduler.providers import make_provider
from scheduler.settings import DispatchSettings
from scheduler.simulation import ManualClock
from scheduler.store import ratelimits
from scheduler.testing.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeConfig, running_fake_twilio
from tests.factories import add_recipients

ROOT = Path(__file__).resolve().parents[2]
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
N = 60


def _env(core: Core, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATABASE_URL=core.settings.effective_database_url,
        PINGAN_DATA_DIR=str(core.settings.data_dir),
        PINGAN_SENDING_HOURS="00:00-23:59:59",
        PINGAN_LOG_FORMAT="json",
        PINGAN_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


def _twilio_env(core: Core, base_url: str, backoff: str) -> dict[str, str]:
    return _env(
        core,
        PINGAN_PROVIDER="twilio",
        PINGAN_TWILIO__ACCOUNT_SID=ACCOUNT_SID,
        PINGAN_TWILIO__AUTH_TOKEN=AUTH_TOKEN,
        PINGAN_TWILIO__MESSAGING_SERVICE_SID="MG" + "1" * 32,
        PINGAN_TWILIO__BASE_URL=base_url,
        PINGAN_DISPATCH__BACKOFF_BASE_SECONDS=backoff,
        PINGAN_DISPATCH__MAX_ATTEMPTS="40",
    )


def _dispatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler", "dispatch", "--until-empty", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _queue(core: Core, n: int = N) -> None:
    add_recipients(core.engine, core.district, n)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)


def test_until_empty_waits_for_retries_coming_due_and_exits_0(core: Core) -> None:
    _queue(core)
    with running_fake_twilio(FakeConfig(fail_429=0.4, seed=3)) as fake:
        done = _dispatch(
            _twilio_env(core, fake.base_url, backoff="0.2"), "--max-wait", "60", "--format", "json"
        )
        assert done.returncode == 0, done.stderr
        assert fake.created_count() == N
        assert fake.duplicates() == []
    out = json.loads(done.stdout)
    assert out["left"] == {}
    assert out["retried"] > 0  # there were 429s, and they were waited for
    with Session(core.engine) as s:
        assert s.scalar(select(func.count()).where(Message.state == MessageState.SENT)) == N


def test_until_empty_exits_1_naming_what_is_left(core: Core) -> None:
    _queue(core)
    with running_fake_twilio(FakeConfig(fail_429=0.5, seed=5)) as fake:
        # Retries back off a minute; waiting at most one second cannot see them through.
        env = _twilio_env(core, fake.base_url, backoff="60")
        started = time.monotonic()
        done = _dispatch(env, "--max-wait", "1")
        elapsed = time.monotonic() - started
        assert done.returncode == 1
        created = fake.created_count()
    with Session(core.engine) as s:
        retrying = s.scalar(
            select(func.count()).where(Message.state == MessageState.QUEUED, Message.attempts > 0)
        )
    assert retrying and retrying + created == N
    assert f"left retrying: {retrying}" in done.stderr.splitlines()
    assert "left queued" not in done.stderr and "left sending" not in done.stderr
    assert elapsed < 30


def _on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run `pingan dispatch` with stdout on a pseudo-terminal; return (exit code, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "dispatch", "--until-empty", *args],
        cwd=ROOT,
        env={**env, "COLUMNS": "120", "TERM": "xterm"},
        stdout=slave,
        stderr=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_only(core: Core) -> None:
    _queue(core)
    code, shown = _on_a_terminal(_env(core))
    assert code == 0
    assert "发送 dispatch" in shown and f"{N}/{N}" in shown and "/s" in shown
    assert "sent " in shown and "failed " in shown
    # Piped, or asked for JSON: no bar, only the result.
    _queue_more = 30
    add_recipients(core.engine, core.district, _queue_more, start=N)
    core.planner().fire_scheduled(
        core.campaigns.get("weekly-antifraud"), MONDAY + dt.timedelta(days=7)
    )
    code, shown = _on_a_terminal(_env(core), "--format", "json")
    assert code == 0
    assert "发送 dispatch" not in shown
    assert json.loads(shown)["claimed"] == N + _queue_more
    piped = _dispatch(_env(core))
    assert piped.returncode == 0
    assert "发送 dispatch" not in piped.stdout
    assert piped.stdout.count("\n") == 1


def test_dry_run_is_not_held_to_the_rate_limit_unless_asked(core: Core) -> None:
    _queue(core, 30)
    clock = ManualClock(MONDAY + dt.timedelta(minutes=5))
    slow = DispatchSettings(rate_per_second=10, concurrency=2)
    free = core.settings.model_copy(update={"dispatch": slow})
    d = Dispatcher(core.engine, make_provider(free), free, clock=clock)
    assert d.run(until_empty=True).sent == 30
    d.close()
    assert ratelimits.taken(core.engine) == {}  # no second of the rate limit was taken
    add_recipients(core.engine, core.district, 30, start=30)
    core.planner().fire_scheduled(
        core.campaigns.get("weekly-antifraud"), MONDAY + dt.timedelta(days=7)
    )
    clock.set(MONDAY + dt.timedelta(days=7, minutes=5))
    limited = free.model_copy(
        update={"dryrun": free.dryrun.model_copy(update={"rate_limited": True})}
    )
    d = Dispatcher(core.engine, make_provider(limited), limited, clock=clock)
    started = time.monotonic()
    assert d.run(until_empty=True).sent == 60
    d.close()
    # 60 messages at 10 a second with a burst of 10: at least five seconds.
    assert time.monotonic() - started >= 4.9
