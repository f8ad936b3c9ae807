"""kill -9 while an opt-out cancels many queued messages: the refusals and the cancellations
commit together or not at all (a real `pingan recipients opt-out` process, SIGKILLed)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.models import Message, MessageState, OptOut
from tests.factories import add_recipients, recipient_rows

ROOT = Path(__file__).resolve().parents[2]
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
OPT_OUT = [sys.executable, "-m", "scheduler", "recipients", "opt-out"]


def _counts(core: Core) -> tuple[int, int, int]:
    with Session(core.engine) as s:
        opted = s.scalar(select(func.count()).select_from(OptOut)) or 0
        states = dict(s.execute(select(Message.state, func.count()).group_by(Message.state)).all())
    return opted, states.get(MessageState.CANCELLED, 0), states.get(MessageState.QUEUED, 0)


def _env(core: Core) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATABASE_URL=core.settings.effective_database_url,
        PINGAN_DATA_DIR=str(core.settings.data_dir),
        PINGAN_LOG_FORMAT="json",
    )
    return env


def _opt_out_process(core: Core, phones_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*OPT_OUT, "--file", str(phones_file)],
        cwd=ROOT,
        env=_env(core),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _sqlite_writer_busy(path: str) -> bool:
    """True while another process holds SQLite's write lock (its transaction is open)."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def test_killed_opt_out_commits_all_or_nothing(core: Core, tmp_path: Path) -> None:
    postgres = core.engine.dialect.name == "postgresql"
    n = 6000 if postgres else 30000
    add_recipients(core.engine, core.district, n)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    phones = [r["phone"] for r in recipient_rows(core.district, n)]
    phones_file = tmp_path / "refusals.txt"
    phones_file.write_text("\n".join(phones) + "\n", encoding="utf-8")
    assert _counts(core) == (0, 0, n)

    if postgres:
        # Hold one of the last residents' messages: the opt-out's transaction, its refusals
        # written, then waits on that row mid-way through cancelling, and is killed there.
        blocker = core.engine.connect()
        blocker.execute(
            select(Message.id).where(Message.phone == phones[-1]).with_for_update()
        ).all()
        proc = _opt_out_process(core, phones_file)
        try:
            deadline = time.monotonic() + 60
            waiting = None
            while time.monotonic() < deadline and waiting is None:
                waiting = blocker.execute(
                    text(
                        "SELECT pid FROM pg_locks WHERE NOT granted "
                        "AND pid <> pg_backend_pid() AND locktype = 'transactionid'"
                    )
                ).scalar()
                time.sleep(0.05)
            assert waiting is not None, "the opt-out never reached the held row"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            blocker.rollback()
            blocker.close()
        with core.engine.connect() as conn:
            deadline = time.monotonic() + 60
            while (
                time.monotonic() < deadline
                and conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": waiting}
                ).scalar()
            ):
                time.sleep(0.05)
        # Killed mid-transaction: nothing of it is left.
        assert _counts(core) == (0, 0, n)
    else:
        path = core.engine.url.database
        assert path is not None
        proc = _opt_out_process(core, phones_file)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not _sqlite_writer_busy(path):
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, "the opt-out finished before the kill"
        opted, cancelled, queued = _counts(core)
        # Either the whole refusal with its cancellations, or none of it.
        assert (opted, cancelled, queued) in ((0, 0, n), (n, n, 0))

    # Run again to the end: every refusal recorded, every queued message cancelled, once.
    _, _, still_queued = _counts(core)
    again = subprocess.run(
        [*OPT_OUT, "--file", str(phones_file), "--format", "json"],
        cwd=ROOT,
        env=_env(core),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["cancelled"] == still_queued
    assert _counts(core) == (n, n, 0)
