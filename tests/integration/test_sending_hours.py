"""Sending hours hold per message: a slow batch that runs past 20:00 stops handing messages to
the provider at 20:00, and what is left waits, unattempted, for the next morning."""

from __future__ import annotations

import datetime as dt
import time
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.dispatcher import Dispatcher
from scheduler.models import Attempt, Message, MessageState
from scheduler.providers import make_provider
from scheduler.settings import DispatchSettings
from scheduler.simulation import ManualClock
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)


class RunningClock:
    """Wall-clock time from `start`, `speed` times as fast: the rate limiter's real waits move
    it past the end of the sending hours in the middle of a batch."""

    def __init__(self, start: dt.datetime, speed: float) -> None:
        self.start = start
        self.speed = speed
        self.t0 = time.monotonic()

    def __call__(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=(time.monotonic() - self.t0) * self.speed)


def test_a_batch_crossing_20_00_sends_nothing_after_it(core: Core) -> None:
    n = 60
    add_recipients(core.engine, core.district, n)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    settings = core.settings.model_copy(
        update={
            # 10 at once (the bucket's burst), then 10 a second: the batch would take 5 s.
            "dispatch": DispatchSettings(rate_per_second=10, concurrency=4, batch_size=n),
            "dryrun": core.settings.dryrun.model_copy(update={"rate_limited": True}),
        }
    )
    # 20:00 comes 2.5 s after the start (less whatever the start-up takes on a busy machine).
    clock = RunningClock(dt.datetime(2022, 10, 10, 19, 59, 50, tzinfo=TZ), speed=4)
    d = Dispatcher(core.engine, make_provider(settings), settings, clock=clock)
    stats = d.run(until_empty=True)
    assert stats.claimed == n and stats.batches == 1  # one batch, claimed inside the hours
    assert stats.sent > 0 and stats.deferred > 0
    assert stats.sent + stats.deferred == n
    assert stats.failed == stats.retried == 0
    eight_pm = dt.datetime(2022, 10, 10, 20, 0, tzinfo=TZ)
    next_morning = dt.datetime(2022, 10, 11, 8, 0, tzinfo=TZ)
    with Session(core.engine) as s:
        sent = s.execute(select(Message.sent_at).where(Message.sent_at.is_not(None))).all()
        left = s.execute(
            select(Message.id, Message.attempts, Message.next_attempt_at).where(
                Message.state == MessageState.QUEUED
            )
        ).all()
        attempts = s.scalar(select(func.count()).select_from(Attempt))
    assert len(sent) == stats.sent
    assert all(r[0] < eight_pm for r in sent)
    assert len(left) == stats.deferred
    # Not an attempt, not a failure: attempts given back, next try at the next opening.
    assert {(r[1], r[2]) for r in left} == {(0, next_morning)}
    assert attempts == stats.sent

    morning = ManualClock(next_morning)
    d.clock = morning
    assert d.run(until_empty=True).sent == stats.deferred
    d.close()
    with Session(core.engine) as s:
        assert s.scalar(select(func.max(Message.attempts))) == 1
    lines = core.settings.dryrun_log_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == n  # each once
