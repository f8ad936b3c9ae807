"""`pingan dispatch --workers N`: N dispatcher processes on one outbox, run as a user runs them.

The rate limits are checked where they matter, at the provider: the fake Twilio stamps each
message with the second it was created, and no second may hold more than the limit (plus the
tolerance stated below). Nothing is sent twice (counted at the fake), nothing is lost (counted
in the database), a worker killed with SIGKILL mid-batch included, and stopping the parent
stops its workers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.models import Attempt, Message, MessageState
from scheduler.ratelimit import OVERALL, Limits, carrier_key
from scheduler.store import ratelimits
from scheduler.testing.fake_twilio import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FakeConfig,
    FakeTwilio,
    running_fake_twilio,
)
from tests.factories import add_recipients
from tests.integration.test_web import _free_port

ROOT = Path(__file__).resolve().parents[2]
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
# A request sent in the last moments of a second can be created at the fake in the next one
# (loopback, HTTP parsing, a busy 2-core machine), so a second may hold a little more than
# its limit: 20% of it, and at least one message.
TOLERANCE = 0.2


def _queue(core: Core, n: int) -> None:
    add_recipients(core.engine, core.district, n)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)


def _env(core: Core, base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATABASE_URL=core.settings.effective_database_url,
        PINGAN_DATA_DIR=str(core.settings.data_dir),
        PINGAN_PROVIDER="twilio",
        PINGAN_TWILIO__ACCOUNT_SID=ACCOUNT_SID,
        PINGAN_TWILIO__AUTH_TOKEN=AUTH_TOKEN,
        PINGAN_TWILIO__MESSAGING_SERVICE_SID="MG" + "1" * 32,
        PINGAN_TWILIO__BASE_URL=base_url,
        PINGAN_SENDING_HOURS="00:00-23:59:59",
        PINGAN_LOG_FORMAT="json",
        PINGAN_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def _dispatch(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "scheduler", "dispatch", "--format", "json", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _states(core: Core) -> dict[str, int]:
    with Session(core.engine) as s:
        rows = s.execute(select(Message.state, func.count()).group_by(Message.state)).all()
    return {str(state): int(n) for state, n in rows}


def _children(pid: int) -> list[int]:
    """The live child processes of `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(condition: object, timeout: float = 120) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _postgres_only(core: Core) -> None:
    if core.engine.dialect.name != "postgresql":
        pytest.skip("several dispatcher processes need PostgreSQL (refused on SQLite)")


def test_workers_hold_the_overall_and_carrier_limits_at_the_provider(core: Core) -> None:
    _postgres_only(core)
    n = 300
    _queue(core, n)
    with Session(core.engine) as s:
        by_phone = {
            phone: (carrier, segments)
            for phone, carrier, segments in s.execute(
                select(Message.phone, Message.carrier, Message.segments)
            )
        }
    overall, mobile = 50, 20
    with running_fake_twilio(FakeConfig(latency_ms=5, jitter_ms=5)) as fake:
        proc = _dispatch(
            _env(
                core,
                fake.base_url,
                PINGAN_DISPATCH__RATE_PER_SECOND=str(overall),
                PINGAN_DISPATCH__SEGMENT_RATE_BY_CARRIER=json.dumps({"mobile": mobile}),
            ),
            "--workers",
            "3",
            "--until-empty",
        )
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        per_second, mobile_per_second = _per_second(fake, by_phone)
    result = json.loads(out)
    assert result["sent"] == n and fake.duplicates() == []
    # Shared: under a limit a batch holds a share of two seconds' sends (a worker started last
    # on a busy machine may still find nothing left).
    assert len(result["sent_by_worker"]) == 3, result
    assert sum(1 for sent in result["sent_by_worker"] if sent) >= 2, result
    assert _states(core) == {MessageState.SENT: n}
    assert max(per_second.values()) <= overall * (1 + TOLERANCE), sorted(per_second.items())
    assert max(mobile_per_second.values()) <= max(mobile * (1 + TOLERANCE), mobile + 2), sorted(
        mobile_per_second.items()
    )
    # The limit was the bottleneck, not something else: the sends took the seconds it implies.
    assert len(per_second) >= n // overall


def _per_second(
    fake: FakeTwilio, by_phone: dict[str, tuple[str, int]]
) -> tuple[Counter[dt.datetime], Counter[dt.datetime]]:
    """Messages, and mobile segments, created at the fake in each second."""
    overall: Counter[dt.datetime] = Counter()
    mobile: Counter[dt.datetime] = Counter()
    with fake.lock:
        created = [(m.created, m.to) for m in fake.messages.values()]
    for second, to in created:
        overall[second] += 1
        carrier, segments = by_phone[to.removeprefix("+86")]
        if carrier == "mobile":
            mobile[second] += segments
    return overall, mobile


def test_workers_drain_the_outbox_once_each(core: Core) -> None:
    _postgres_only(core)
    n = 3000
    _queue(core, n)
    with running_fake_twilio() as fake:
        proc = _dispatch(
            _env(core, fake.base_url, PINGAN_DISPATCH__RATE_PER_SECOND="100000"),
            "--workers",
            "3",
            "--until-empty",
        )
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert fake.created_count() == n and fake.duplicates() == []
    result = json.loads(out)
    assert result["sent"] == n and sum(result["sent_by_worker"]) == n
    assert _states(core) == {MessageState.SENT: n}


def test_worker_killed_mid_batch_loses_and_duplicates_nothing(core: Core) -> None:
    _postgres_only(core)
    n = 3000
    _queue(core, n)
    port = _free_port()
    # The fake holds its answers once a third is created: every worker is then certainly
    # waiting on Twilio with a batch marked `sending`, some of it created, when one is killed.
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scheduler.testing.fake_twilio",
            "--port",
            str(port),
            "--hold-after",
            str(n // 3),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None
        base = fake.stdout.readline().strip()
        proc = _dispatch(
            _env(
                core,
                base,
                PINGAN_DISPATCH__BATCH_SIZE="200",
                PINGAN_DISPATCH__CONCURRENCY="4",
                # The survivors settle the killed worker's batch once it is this old; longer
                # than the hold (a live worker's batch is never taken for a dead one's).
                PINGAN_DISPATCH__STALE_SENDING_SECONDS="20",
            ),
            "--workers",
            "3",
            "--until-empty",
            "--max-wait",
            "120",
        )
        _wait_for(lambda: _fake_stats(base)["held"] >= 3)
        workers = _children(proc.pid)
        assert len(workers) >= 3, workers  # (the spawn helper may be among them)
        victim = max(workers, key=_threads)
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: not _alive(victim))
        urllib.request.urlopen(
            urllib.request.Request(base + "/_fake/release", method="POST"), timeout=10
        ).close()
        out, err = proc.communicate(timeout=300)
        stats = _fake_stats(base)
    finally:
        fake.terminate()
        fake.wait(timeout=30)
        if fake.stdout is not None:
            fake.stdout.close()
    assert proc.returncode == 1 and f"pid {victim}" in err and "SIGKILL" in err, err
    assert stats["created"] == n and stats["duplicates"] == 0
    assert _states(core) == {MessageState.SENT: n}
    # Counted once: the killed worker's totals up to its last batch, and its batch in flight
    # as the survivors settled it (found at the provider), once each.
    assert json.loads(out)["sent"] <= n
    with Session(core.engine) as s:
        twice = s.scalar(
            select(func.count()).select_from(
                select(Attempt.message_id)
                .where(Attempt.outcome.in_(["sent", "found"]))
                .group_by(Attempt.message_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
    assert twice == 0


def _threads(pid: int) -> int:
    """A worker runs its send threads; the resource tracker spawn may start runs one."""
    try:
        return len(list(Path(f"/proc/{pid}/task").iterdir()))
    except OSError:
        return 0


def _fake_stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/_fake/stats", timeout=10) as resp:
        data: dict[str, int] = json.load(resp)
    return data


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_parent_stops_its_workers(core: Core, signum: signal.Signals) -> None:
    _postgres_only(core)
    n = 3000
    _queue(core, n)
    # Slow sends (50 a second overall), so the workers are certainly mid-outbox when stopped.
    with running_fake_twilio() as fake:
        proc = _dispatch(
            _env(core, fake.base_url, PINGAN_DISPATCH__RATE_PER_SECOND="50"),
            "--workers",
            "3",
            "--until-empty",
        )
        _wait_for(lambda: fake.created_count() >= 20)
        workers = _children(proc.pid)
        assert workers
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        created = fake.created_count()
        assert fake.duplicates() == []
    assert all(not _alive(pid) for pid in workers)
    # Stopped cleanly: every message sent is recorded, the rest is back in the queue.
    states = _states(core)
    assert states.get(MessageState.SENDING, 0) == 0, states
    assert states[MessageState.SENT] == created == json.loads(out)["sent"]
    assert states[MessageState.QUEUED] == n - created
    assert proc.returncode == 1  # --until-empty with messages left
    assert "left queued" in err


def test_several_workers_are_refused_on_sqlite(core: Core) -> None:
    if core.engine.dialect.name != "sqlite":
        pytest.skip("the SQLite refusal")
    _queue(core, 10)
    proc = _dispatch(_env(core, "http://127.0.0.1:9"), "--workers", "2", "--until-empty")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "--workers above 1 needs PostgreSQL" in " ".join(err.split())
    assert _states(core) == {MessageState.QUEUED: 10}  # nothing was claimed


def test_the_service_runs_its_dispatcher_as_workers(core: Core) -> None:
    """PINGAN_DISPATCH__WORKERS: `pingan run` drains the outbox through that many processes
    and stops them when it stops."""
    _postgres_only(core)
    n = 600
    _queue(core, n)
    with running_fake_twilio() as fake:
        env = _env(
            core,
            fake.base_url,
            PINGAN_DISPATCH__WORKERS="2",
            PINGAN_DISPATCH__POLL_SECONDS="0.2",
            PINGAN_DISPATCH__RATE_PER_SECOND="100000",
            PINGAN_LOG_LEVEL="INFO",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "run", "--no-http"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for(lambda: fake.created_count() == n)
            _wait_for(lambda: _states(core) == {MessageState.SENT: n})
            workers = _children(proc.pid)
            assert len(workers) >= 2, workers
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert fake.duplicates() == []
    assert proc.returncode == 0, err
    assert '"event": "workers.started"' in err and '"workers": 2' in err
    assert all(not _alive(pid) for pid in workers)


def test_the_service_refuses_workers_on_sqlite(core: Core) -> None:
    if core.engine.dialect.name != "sqlite":
        pytest.skip("the SQLite refusal")
    env = _env(core, "http://127.0.0.1:9", PINGAN_DISPATCH__WORKERS="2")
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", "run", "--no-http", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "--workers above 1 needs PostgreSQL" in " ".join(done.stderr.split())


def test_reservations_from_concurrent_dispatchers_add_up(engine: Engine) -> None:
    """Four threads, each with its own connections, reserving at once: no second of the
    limit is handed out twice (PostgreSQL's advisory lock, SQLite's one writer)."""
    limits = Limits(100, {"mobile": 30})
    needs = [limits.need("mobile" if i % 2 else "unicom", 1) for i in range(150)]
    now = float(int(time.time()) + 5)  # a second ahead, at its start: none of it gone by
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda _: ratelimits.reserve(engine, needs, limits, now=now), range(4))
        )
    overall = Counter(int(t) for times in results for t in times)
    mobile = Counter(
        int(t) for times in results for t, need in zip(times, needs, strict=True) if len(need) > 1
    )
    assert sum(overall.values()) == 600
    assert max(overall.values()) == 100 and max(mobile.values()) == 30
    stored = ratelimits.taken(engine)
    assert all(v <= 100 for (k, _), v in stored.items() if k == OVERALL)
    assert sum(v for (k, _), v in stored.items() if k == carrier_key("mobile")) == 300
