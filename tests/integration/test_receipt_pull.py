"""Receipts pulled for messages no push settled (an intranet the gateway cannot reach): the real
Tencent SDK against its fake on 127.0.0.1, on SQLite and PostgreSQL, and `pingan delivery
pull` as a cron job runs it."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from zoneinfo import ZoneInfo

from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.dispatcher import build_dispatcher
from scheduler.models import Message, MessageState, SendCounter
from scheduler.providers.tencent import TencentProvider
from scheduler.receipts import pull_receipts
from scheduler.settings import Settings, TencentSettings
from scheduler.testing.fake_tencent import (
    SDK_APP_ID,
    SECRET_ID,
    SECRET_KEY,
    SIGN_NAME,
    FakeConfig,
    FakeTencent,
    running_fake_tencent,
)
from tests.conftest import ROOT
from tests.factories import add_recipients

MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
NOW = dt.timedelta(0)
HOUR = dt.timedelta(hours=1)


def _provider(fake: FakeTencent) -> TencentProvider:
    settings = Settings(
        config_dir=ROOT / "config",
        tencent=TencentSettings(
            secret_id=SECRET_ID,
            secret_key=SecretStr(SECRET_KEY),
            sdk_app_id=SDK_APP_ID,
            sign_name=SIGN_NAME,
            endpoint=fake.endpoint,
            protocol="http",
            report_wait_seconds=0,
        ),
    )
    return TencentProvider.from_settings(settings)


@contextmanager
def _sent(core: Core, n: int, config: FakeConfig) -> Iterator[tuple[FakeTencent, TencentProvider]]:
    """n residents' weekly SMS sent through the fake, no receipt pushed: all `sent`."""
    add_recipients(core.engine, core.district, n)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    with running_fake_tencent(config) as fake:
        provider = _provider(fake)
        dispatcher = build_dispatcher(core, provider, respect_hours=False)
        try:
            dispatcher.run(until_empty=True)
            assert _states(core) == {MessageState.SENT: n}
            yield fake, provider
        finally:
            dispatcher.close()


def _states(core: Core) -> dict[MessageState, int]:
    with Session(core.engine) as s:
        rows = s.execute(select(Message.state, func.count()).group_by(Message.state)).all()
    return {row[0]: row[1] for row in rows}


def _delivered_counted(core: Core) -> int:
    with Session(core.engine) as s:
        return int(
            s.execute(select(func.coalesce(func.sum(SendCounter.delivered), 0))).scalar_one()
        )


def test_a_pull_settles_every_sent_message_once(core: Core) -> None:
    with _sent(core, 40, FakeConfig(undelivered_share=0.25)) as (_, provider):
        first = pull_receipts(core, provider, older_than=NOW, recheck_after=NOW, limit=1000)
        again = pull_receipts(core, provider, older_than=NOW, recheck_after=NOW, limit=1000)
    assert (first.looked_up, first.applied, first.not_final, first.errors) == (40, 40, 0, 0)
    states = _states(core)
    assert set(states) == {MessageState.DELIVERED, MessageState.UNDELIVERED}
    assert states[MessageState.DELIVERED] + states[MessageState.UNDELIVERED] == 40
    # The counters count what the pull settled, as for a pushed receipt.
    assert _delivered_counted(core) == states[MessageState.DELIVERED]
    assert again.looked_up == 0  # nothing left `sent`: nothing asked twice


def _looked_up(core: Core) -> int:
    """Messages whose status time moved past their send time: looked up at least once."""
    with Session(core.engine) as s:
        return int(
            s.execute(select(func.count()).where(Message.status_at > Message.sent_at)).scalar_one()
        )


def test_messages_without_a_report_yet_wait_for_the_next_round(core: Core) -> None:
    # The carrier's report is an hour away: the gateway has nothing to say about them yet.
    with _sent(core, 12, FakeConfig(report_delay=3600)) as (_, provider):
        first = pull_receipts(core, provider, older_than=NOW, recheck_after=NOW, limit=5)
        assert _looked_up(core) == 5
        # The limit takes the ones not looked up yet first.
        second = pull_receipts(core, provider, older_than=NOW, recheck_after=NOW, limit=7)
        assert _looked_up(core) == 12
        # Nothing is asked again within `recheck_after`, nor before `older_than`.
        too_soon = pull_receipts(core, provider, older_than=NOW, recheck_after=HOUR, limit=100)
        young = pull_receipts(core, provider, older_than=HOUR, recheck_after=NOW, limit=100)
    assert (first.looked_up, first.not_final, first.applied) == (5, 5, 0)
    assert (second.looked_up, second.not_final) == (7, 7)
    assert too_soon.looked_up == 0
    assert young.looked_up == 0
    assert _states(core) == {MessageState.SENT: 12}


def test_delivery_pull_from_the_command_line(core: Core) -> None:
    with _sent(core, 25, FakeConfig(secret_id=None, secret_key=None)) as (fake, _):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
        env.update(
            PINGAN_DATABASE_URL=core.settings.effective_database_url,
            PINGAN_DATA_DIR=str(core.settings.data_dir),
            PINGAN_PROVIDER="tencent",
            # The fake run on its own accepts any key, as an office's rehearsal would have.
            PINGAN_TENCENT__SECRET_ID="office-key-id",
            PINGAN_TENCENT__SECRET_KEY="office-key",
            PINGAN_TENCENT__SDK_APP_ID=SDK_APP_ID,
            PINGAN_TENCENT__SIGN_NAME=SIGN_NAME,
            PINGAN_TENCENT__ENDPOINT=fake.endpoint,
            PINGAN_TENCENT__PROTOCOL="http",
            PINGAN_LOG_LEVEL="WARNING",
        )
        cmd = [sys.executable, "-m", "scheduler", "delivery", "pull", "--format", "json"]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"looked_up": 25, "applied": 25, "not_final": 0, "errors": 0}
    assert _states(core) == {MessageState.DELIVERED: 25}


def test_the_service_pulls_for_a_real_provider_only(settings: Settings) -> None:
    from scheduler.loop import RECEIPTS_JOB, Loop

    def job_ids(**changes: object) -> set[str]:
        c = Core(settings.model_copy(update=changes))
        try:
            return {j.id for j in Loop(c).jobs()}
        finally:
            c.close()

    assert RECEIPTS_JOB in job_ids(provider="tencent")
    # A rehearsal settles every message at once; 0 minutes turns the pull off.
    assert RECEIPTS_JOB not in job_ids(provider="dryrun")
    off = settings.dispatch.model_copy(update={"receipt_pull_minutes": 0})
    assert RECEIPTS_JOB not in job_ids(provider="tencent", dispatch=off)
