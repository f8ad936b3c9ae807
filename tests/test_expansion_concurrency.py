"""The weekly cap holds when expansions run at once, on SQLite and PostgreSQL.

Three SMS campaigns in one week and a cap of 2: each alone would message everyone, so any
interleaving of one expansion's cap check with another's insert shows as residents with 3.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.expansion import ExpansionResult
from scheduler.models import Message, Occurrence, OccurrenceState
from scheduler.planner import Firing
from scheduler.settings import Settings
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)
N = 3000
ROOT = Path(__file__).resolve().parent.parent


def _firings(core: Core) -> list[Firing]:
    c = core.campaigns
    hour = dt.timedelta(hours=1)
    return [
        Firing(c.get("weekly-antifraud"), MONDAY, "weekly-antifraud"),
        Firing(c.get("survey-notice"), MONDAY + hour, "survey-notice", "manual"),
        Firing(c.get("quota-top-up"), MONDAY + 2 * hour, "quota-top-up:test", "manual"),
    ]


def _most_per_resident(core: Core) -> tuple[int, int]:
    """(the most SMS any resident has this week, how many residents have more than 2)."""
    with Session(core.engine) as s:
        per = (
            select(Message.recipient_id, func.count().label("n"))
            .group_by(Message.recipient_id)
            .subquery()
        )
        most = s.scalar(select(func.max(per.c.n))) or 0
        over = s.scalar(select(func.count()).select_from(per).where(per.c.n > 2)) or 0
    return most, over


def test_three_expansions_at_once_keep_everyone_within_the_cap(settings: Settings) -> None:
    settings.weekly_cap = 2
    seed = Core(settings)
    add_recipients(seed.engine, seed.district, N)
    cores = [Core(settings) for _ in range(3)]  # one engine (connection pool) each
    start = threading.Barrier(3)
    results: list[ExpansionResult] = []
    errors: list[BaseException] = []

    def expand(core: Core, firing: Firing) -> None:
        try:
            planner = core.planner(chunk_size=100)
            start.wait()
            results.append(planner.fire(firing))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=expand, args=(core, f))
        for core, f in zip(cores, _firings(seed), strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == 3 and all(r.state == OccurrenceState.READY for r in results)
    most, over = _most_per_resident(seed)
    assert (most, over) == (2, 0)
    # Every resident got exactly two: the cap was used in full, not just respected.
    assert sum(r.queued for r in results) == 2 * N
    assert sum(r.excluded.get("over_cap", 0) for r in results) == N
    for r in results:
        assert r.queued + sum(r.excluded.values()) == N
    for core in (seed, *cores):
        core.close()


def _env(core: Core) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATABASE_URL=core.settings.effective_database_url,
        PINGAN_DATA_DIR=str(core.settings.data_dir),
        PINGAN_LOG_FORMAT="json",
        PINGAN_WEEKLY_CAP="2",
    )
    return env


def test_three_processes_at_once_keep_everyone_within_the_cap(core: Core) -> None:
    add_recipients(core.engine, core.district, N)
    # The third campaign fires from `pingan cases`-like code paths in production; here all
    # three are plain `campaigns run` commands in their own processes.
    commands = [
        ["weekly-antifraud", "--at", "2022-10-10T09:00"],
        ["survey-notice", "--at", "2022-10-10T10:00"],
        ["participation", "--at", "2022-10-10T11:00"],
    ]
    config = core.settings.data_dir / "config"
    config.mkdir(parents=True)
    for path in (ROOT / "config").glob("*.yaml"):
        (config / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (config / "campaigns.yaml").write_text(
        (ROOT / "config" / "campaigns.yaml").read_text(encoding="utf-8")
        + """
  - name: participation
    channel: sms
    template: participation-ways
    schedule: {cron: "0 11 * * mon"}
    active: {start: 2022-10-01, end: 2022-12-31}
""",
        encoding="utf-8",
    )
    env = {**_env(core), "PINGAN_CONFIG_DIR": str(config)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "scheduler", "campaigns", "run", *args, "--format", "json"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for args in commands
    ]
    for p in procs:
        _out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    with Session(core.engine) as s:
        states = s.scalars(select(Occurrence.state)).all()
    assert states == [OccurrenceState.READY] * 3
    assert _most_per_resident(core) == (2, 0)
    with Session(core.engine) as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 2 * N
