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

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.expansion import ExpansionResult
from scheduler.models import Message, Occurrence, OccurrenceState, OptOut
from scheduler.planner import Firing
from scheduler.settings import Settings
from scheduler.store import outbox
from scheduler.store.retention import period_of
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)
N = 3000
ROOT = Path(__file__).resolve().parents[2]


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


def test_one_occurrence_expanded_twice_at_once_is_written_once(settings: Settings) -> None:
    """Two processes resuming the same occurrence (a CLI run during a restart): each chunk is
    written by one of them, so messages and exclusion counts are not doubled."""
    seed = Core(settings)
    add_recipients(seed.engine, seed.district, 1000)
    with Session(seed.engine) as s, s.begin():
        for i in range(0, 1000, 100):  # ten residents opted out
            phone = ("138", "186", "189")[i % 3] + f"{i:08d}"
            s.add(OptOut(phone=phone, source="test", reason=None, created_at=MONDAY))
    cores = [Core(settings) for _ in range(2)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def expand(core: Core) -> None:
        try:
            planner = core.planner(chunk_size=50)
            start.wait()
            planner.fire(Firing(core.campaigns.get("weekly-antifraud"), MONDAY, "weekly"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=expand, args=(c,)) for c in cores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    # Whichever stopped first, finish it as a restart would.
    seed.planner().resume_expanding()
    with Session(seed.engine) as s:
        occ = s.scalars(select(Occurrence)).one()
        total = s.scalar(select(func.count()).select_from(Message))
    assert occ.state == OccurrenceState.READY
    assert total == occ.queued == 990
    assert occ.excluded == {"opted_out": 10}
    for core in (seed, *cores):
        core.close()


def test_a_chunk_is_written_only_by_the_expansion_that_holds_its_cursor(
    engine: Engine,
) -> None:
    occ, _ = outbox.get_or_create_occurrence(
        engine,
        campaign="weekly",
        scheduled_at=MONDAY,
        kind="scheduled",
        channel="sms",
        priority=0,
        now=MONDAY,
    )
    other, _ = outbox.get_or_create_occurrence(
        engine,
        campaign="other",
        scheduled_at=MONDAY + dt.timedelta(hours=1),
        kind="scheduled",
        channel="sms",
        priority=0,
        now=MONDAY,
    )
    body = outbox.ensure_body(
        engine, text="t", template_name="t", template_hash="h", chars=1, segments=1
    )

    def rows(occurrence_id: int, ids: range) -> list[outbox.QueuedMessage]:
        return [
            outbox.QueuedMessage(
                occurrence_id,
                i,
                f"138{i:08d}",
                "huanghu",
                "qingbo",
                "mobile",
                body,
                1,
                0,
                MONDAY,
                MONDAY,
            )
            for i in ids
        ]

    week = outbox.WeeklyCap(MONDAY - dt.timedelta(hours=9), MONDAY + dt.timedelta(days=7), 1)
    first = outbox.write_capped_chunk(
        engine,
        occ.id,
        rows(occ.id, range(1, 11)),
        cap=week,
        expect_cursor=0,
        cursor=10,
        excluded={"opted_out": 1},
        period=period_of(MONDAY, TZ),
    )
    assert (first.written, first.stale) == (10, False)
    # A second expander that read the occurrence at cursor 0 writes nothing.
    second = outbox.write_capped_chunk(
        engine,
        occ.id,
        rows(occ.id, range(1, 11)),
        cap=week,
        expect_cursor=0,
        cursor=10,
        excluded={"opted_out": 1},
        period=period_of(MONDAY, TZ),
    )
    assert (second.written, second.stale) == (0, True)
    # Another occurrence the same week: residents 1-10 are at the cap of 1, 11-15 are not;
    # `room` keeps 3 of those.
    third = outbox.write_capped_chunk(
        engine,
        other.id,
        rows(other.id, range(1, 16)),
        cap=week,
        expect_cursor=0,
        cursor=15,
        excluded={},
        period=period_of(MONDAY, TZ),
        room=3,
    )
    assert third.written == 3
    assert third.excluded == {"over_cap": 10, "over_limit": 2}
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 13
        stored = s.get(Occurrence, occ.id)
        assert stored is not None
        assert (stored.cursor, stored.excluded) == (10, {"opted_out": 1})
