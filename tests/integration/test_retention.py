"""Monthly partitions and pruning, on both backends: the exactly-once key keeps holding, a
pruned month's report keeps its figures, archives hold exactly the rows dropped, and a prune
cut short carries on."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import stat
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError

from scheduler.core import Core
from scheduler.db import transaction
from scheduler.dispatcher import Dispatcher
from scheduler.exceptions import PingAnError
from scheduler.loop import PARTITIONS_JOB, Loop
from scheduler.models import Attempt, Message, MessageState, Occurrence
from scheduler.periods import Month
from scheduler.providers import make_provider
from scheduler.reports import build_monthly_report
from scheduler.services.retention import PruneRefused, prune
from scheduler.simulation import ManualClock
from scheduler.store import outbox
from scheduler.store import retention as store
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")


def _count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def _send_weeks(core: Core, clock: ManualClock, days: list[dt.date]) -> None:
    weekly = core.campaigns.get("weekly-antifraud")
    for day in days:
        clock.set(dt.datetime.combine(day, dt.time(9), TZ))
        core.planner().fire_scheduled(weekly, clock())
        d = Dispatcher(core.engine, make_provider(core.settings), core.settings, clock=clock)
        d.run(until_empty=True)
        d.close()


def _history(core: Core) -> ManualClock:
    """Weekly sends on 10 and 31 October (Monday; 31 Oct's messages are November's on no
    day: they belong to October's occurrence) and 7 November, through the dry-run provider."""
    clock = ManualClock(dt.datetime(2022, 10, 1, 3, 10, tzinfo=TZ))
    core.clock = clock
    # The service's nightly job at the start of October: partitions for Oct-Jan on PostgreSQL.
    Loop(core).partitions()
    add_recipients(core.engine, core.district, 90)
    _send_weeks(core, clock, [dt.date(2022, 10, 10), dt.date(2022, 10, 31), dt.date(2022, 11, 7)])
    clock.set(dt.datetime(2022, 12, 2, 9, 0, tzinfo=TZ))
    return clock


def _report_figures(core: Core, month: str) -> dict[str, Any]:
    """What the monthly report shows that counts sends: the form and its total, and every
    quota row (from the send counters)."""
    report = build_monthly_report(core, month)
    return {
        "form": report.form,
        "total": report.total,
        "quotas": [st.to_dict() for st in report.quotas],
    }


def _archive_rows(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_pruned_month_keeps_its_report_and_is_archived_whole(core: Core) -> None:
    _history(core)
    october = Month(2022, 10)
    engine = core.engine
    lo, hi = october.bounds(TZ)
    messages = _count(engine, Message, Message.period == october.first_day)
    attempts = _count(engine, Attempt, Attempt.attempted_at >= lo, Attempt.attempted_at < hi)
    assert messages == 180 and attempts >= 180
    before = _report_figures(core, "2022-10")
    november = _report_figures(core, "2022-11")

    result = prune(core, "2022-11")

    assert [(m.month, m.messages, m.attempts, m.action) for m in result.months] == [
        ("2022-10", messages, attempts, "pruned")
    ]
    assert _report_figures(core, "2022-10") == before
    assert _report_figures(core, "2022-11") == november
    assert _count(engine, Message, Message.period == october.first_day) == 0
    assert _count(engine, Attempt, Attempt.attempted_at < hi) == 0
    assert _count(engine, Message) == 90  # November's stay
    folder = core.settings.data_dir / "archive"
    archived = _archive_rows(folder / "messages-2022-10.csv.gz")
    assert len(archived) == messages
    assert len({(r["occurrence_id"], r["recipient_id"]) for r in archived}) == messages
    assert {r["period"] for r in archived} == {"2022-10-01"}
    assert all(len(r["phone"]) == 11 for r in archived)  # the office's record, as stored
    assert len(_archive_rows(folder / "attempts-2022-10.csv.gz")) == attempts
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    if engine.dialect.name == "postgresql":
        assert result.months[0].partitions_dropped == ["messages_p2022_10", "attempts_p2022_10"]
        with engine.connect() as conn:
            assert Month(2022, 10) not in store.month_partitions(conn, "messages")
            assert Month(2022, 11) in store.month_partitions(conn, "messages")

    # Again: the month is archived and gone, so it is skipped and its archive left alone.
    again = prune(core, "2022-11")
    assert [(m.month, m.action) for m in again.months] == [("2022-10", "skipped")]
    assert len(_archive_rows(folder / "messages-2022-10.csv.gz")) == messages


def test_prune_cut_short_after_its_archive_starts_again(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after writing an archive but before its drop committed, the rows are still
    there: the next run writes the archive again from them, then drops them (here in
    batches of 7, so the batching's ranges are exercised: 180 = 25 x 7 + 5)."""
    monkeypatch.setattr(store, "DELETE_BATCH", 7)
    _history(core)
    folder = core.settings.data_dir / "archive"
    folder.mkdir(parents=True)
    stale = folder / "messages-2022-10.csv.gz"
    stale.write_bytes(gzip.compress(b"id\n1\n"))
    dry = prune(core, "2022-11", dry_run=True)
    assert [(m.month, m.messages, m.action) for m in dry.months] == [
        ("2022-10", 180, "would prune")
    ]
    assert _count(core.engine, Message) == 270
    assert len(_archive_rows(stale)) == 1  # a dry run writes nothing

    deleted: list[tuple[str, int]] = []
    pruned = store.prune_month(
        core.engine,
        Month(2022, 10),
        archive_dir=folder,
        tz=TZ,
        progress=lambda table, n: deleted.append((table, n)),
    )
    assert len(_archive_rows(stale)) == 180
    assert _count(core.engine, Message) == 90
    assert pruned.attempts == len(_archive_rows(folder / "attempts-2022-10.csv.gz")) >= 180
    if core.engine.dialect.name == "sqlite":
        batches = [n for table, n in deleted if table == "messages"]
        assert batches == [7] * 25 + [5]
        assert sum(n for table, n in deleted if table == "attempts") == pruned.attempts


def test_prune_refuses_the_current_month_a_bad_month_and_unfinished_messages(
    core: Core,
) -> None:
    clock = _history(core)
    with pytest.raises(PruneRefused, match="current month"):
        prune(core, "2023-01")
    with pytest.raises(PingAnError, match="YYYY-MM"):
        prune(core, "2022-13")
    # A message of October still queued (a paused occurrence, say): October stays whole.
    with transaction(core.engine) as s:
        s.execute(
            Message.__table__.update()  # type: ignore[attr-defined]
            .where(Message.id == select(func.min(Message.id)).scalar_subquery())
            .values(state=MessageState.QUEUED)
        )
    with pytest.raises(PruneRefused, match="2022-10: 1 message"):
        prune(core, "2022-11")
    assert _count(core.engine, Message) == 270
    assert clock() == dt.datetime(2022, 12, 2, 9, 0, tzinfo=TZ)


def test_the_exactly_once_key_still_refuses_a_second_message(core: Core) -> None:
    clock = ManualClock(dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ))
    core.clock = clock
    add_recipients(core.engine, core.district, 5)
    _send_weeks(core, clock, [dt.date(2022, 10, 10)])
    with core.engine.connect() as conn:
        row = conn.execute(select(Message.__table__).limit(1)).mappings().one()
    again = {k: v for k, v in row.items() if k != "id"}
    with pytest.raises(IntegrityError), transaction(core.engine) as s:
        s.execute(Message.__table__.insert().values(**again))  # type: ignore[attr-defined]
    # The expansion path too: firing the same occurrence again adds nothing.
    weekly = core.campaigns.get("weekly-antifraud")
    core.planner().fire_scheduled(weekly, clock())
    assert _count(core.engine, Message) == 5


def test_partition_job_creates_months_ahead_and_moves_stray_rows(core: Core) -> None:
    engine = core.engine
    clock = ManualClock(dt.datetime(2022, 10, 1, 3, 10, tzinfo=TZ))
    core.clock = clock
    loop = Loop(core)
    assert PARTITIONS_JOB in {job.id for job in loop.jobs()}
    add_recipients(engine, core.district, 5)
    # An occurrence scheduled further ahead than partitions exist: its rows go to the
    # default partition (PostgreSQL) and are moved when its month's partition is made.
    later = dt.datetime(2023, 6, 5, 9, 0, tzinfo=TZ)
    occ, _ = outbox.get_or_create_occurrence(
        engine,
        campaign="ahead",
        scheduled_at=later,
        kind="manual",
        channel="sms",
        priority=0,
        now=clock(),
    )
    body = outbox.ensure_body(
        engine, text="t", template_name="t", template_hash="h", chars=1, segments=1
    )
    rows = [
        outbox.QueuedMessage(
            occ.id, i, f"1380000000{i}", "huanghu", "qingbo", "mobile", body, 1, 0, clock(), later
        )
        for i in range(1, 4)
    ]
    cap = outbox.WeeklyCap(later - dt.timedelta(days=1), later + dt.timedelta(days=6), 2)
    outbox.write_capped_chunk(
        engine,
        occ.id,
        rows,
        cap=cap,
        expect_cursor=0,
        cursor=3,
        excluded={},
        period=store.period_of(later, TZ),
    )
    done = loop.partitions()
    pg = engine.dialect.name == "postgresql"
    expected = [
        f"{t}_p{m}"
        for t in ("messages", "attempts")
        for m in ("2022_10", "2022_11", "2022_12", "2023_01")
    ]
    with engine.connect() as conn:
        assert store.is_partitioned(conn, "messages") is pg
        if pg:
            assert list(done.created) == expected
            in_default = conn.execute(text("SELECT count(*) FROM messages_default")).scalar()
            assert in_default == 3
    clock.set(dt.datetime(2023, 5, 1, 3, 10, tzinfo=TZ))
    done = loop.partitions()
    with engine.connect() as conn:
        if pg:
            assert "messages_p2023_06" in done.created
            assert conn.execute(text("SELECT count(*) FROM messages_default")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM messages_p2023_06")).scalar() == 3
        else:
            assert done.created == ()
    assert _count(engine, Message, Message.occurrence_id == occ.id) == 3
    assert _count(engine, Occurrence) == 1


def test_retention_setting_prunes_from_the_nightly_job(core: Core) -> None:
    clock = _history(core)
    core.settings.retention.months = 1
    clock.set(dt.datetime(2022, 12, 2, 3, 10, tzinfo=TZ))
    done = Loop(core).partitions()
    assert done.pruned is not None
    # December now, one full month kept (November): October goes.
    assert [m.month for m in done.pruned.months] == ["2022-10"]
    assert _count(core.engine, Message) == 90


def test_migration_keeps_existing_messages_and_gives_them_their_period(db_url: str) -> None:
    """An installation with messages upgrades: every row kept with its occurrence's local
    month (09:00 on 1 Nov in Shanghai is 31 Oct in UTC: November), ids continue after it."""
    from alembic.script import ScriptDirectory

    from scheduler.db import alembic_config, make_engine, upgrade

    engine = make_engine(db_url)
    previous = ScriptDirectory.from_config(alembic_config(engine)).get_revision("0014")
    assert previous is not None and isinstance(previous.down_revision, str)
    upgrade(engine, previous.down_revision)
    at = dt.datetime(2022, 11, 1, 9, 0, tzinfo=TZ)
    occ, _ = outbox.get_or_create_occurrence(
        engine, campaign="c", scheduled_at=at, kind="manual", channel="sms", priority=0, now=at
    )
    body = outbox.ensure_body(
        engine, text="t", template_name="t", template_hash="h", chars=1, segments=1
    )
    stored = "2022-11-01 01:00:00.000000" if engine.dialect.name == "sqlite" else at
    with engine.begin() as conn:
        for i in range(1, 4):
            conn.execute(
                text(
                    "INSERT INTO messages (occurrence_id, recipient_id, phone, town_id, "
                    "village_id, carrier, body_id, segments, rank, state, attempts, queued_at) "
                    "VALUES (:o, :i, '13800000000', 'huanghu', 'qingbo', 'mobile', :b, 1, 0, "
                    "'sent', 1, :t)"
                ),
                {"o": occ.id, "i": i, "b": body, "t": stored},
            )
            conn.execute(
                text(
                    "INSERT INTO attempts (message_id, attempted_at, outcome) "
                    "VALUES (:i, :t, 'sent')"
                ),
                {"i": i, "t": stored},
            )
    upgrade(engine)
    with engine.connect() as conn:
        periods = conn.execute(select(Message.period, func.count()).group_by(Message.period))
        assert periods.all() == [(dt.date(2022, 11, 1), 3)]
        assert _count(engine, Attempt) == 3
        if engine.dialect.name == "postgresql":
            assert Month(2022, 11) in store.month_partitions(conn, "messages")
            assert Month(2022, 11) in store.month_partitions(conn, "attempts")
    with transaction(engine) as s:
        again = {
            "occurrence_id": occ.id,
            "recipient_id": 9,
            "phone": "13800000009",
            "town_id": "huanghu",
            "village_id": "qingbo",
            "carrier": "mobile",
            "body_id": body,
            "segments": 1,
            "rank": 0,
            "state": MessageState.QUEUED,
            "attempts": 0,
            "queued_at": at,
            "period": dt.date(2022, 11, 1),
        }
        new_id = s.execute(
            Message.__table__.insert().values(**again).returning(Message.id)  # type: ignore[attr-defined]
        ).scalar_one()
    assert new_id == 4
    engine.dispose()


@pytest.mark.parametrize("change", [False, True])
def test_postgres_archive_from_a_snapshot_is_rewritten_if_the_month_changed(
    core: Core, change: bool
) -> None:
    """PostgreSQL writes the archive without a lock, then checks under the lock that nothing
    changed since its snapshot: unchanged, the file is kept as written; changed (a late
    status written to one message in between), the archive is written again and holds it."""
    if core.engine.dialect.name != "postgresql":
        pytest.skip("the snapshot archive is PostgreSQL's (SQLite archives under its lock)")
    _history(core)
    engine = core.engine
    october = Month(2022, 10)
    folder = core.settings.data_dir / "archive"
    snapshot = store._archive_from_snapshot(engine, october, TZ, folder)
    assert snapshot is not None and snapshot[1] == 180
    path = folder / "messages-2022-10.csv.gz"
    written = path.stat().st_mtime_ns
    if change:
        with transaction(engine) as s:
            s.execute(
                Message.__table__.update()  # type: ignore[attr-defined]
                .where(Message.id == select(func.min(Message.id)).scalar_subquery())
                .values(error_code="late-status")
            )
    done = store._prune_locked(engine, october, folder, TZ, False, None, snapshot)
    assert (done.messages, done.action) == (180, "pruned")
    codes = [r["error_code"] for r in _archive_rows(path)]
    assert len(codes) == 180
    assert ("late-status" in codes) is change
    assert (path.stat().st_mtime_ns != written) is change
    assert _count(engine, Message, Message.period == october.first_day) == 0
