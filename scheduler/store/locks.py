"""The one-active-scheduler lock: a PostgreSQL advisory lock, or a heartbeated row on SQLite."""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
import zlib

from sqlalchemy import Connection, Engine, delete, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from scheduler.models import SchedulerLock


class DatabaseLock:
    """Held by one process per database at a time.

    `try_acquire` never blocks; a standby calls it again until it wins. On PostgreSQL the lock
    lives as long as the holding connection, so a killed holder frees it at once. On SQLite the
    row expires when its holder stops refreshing it for `ttl`.
    """

    def __init__(self, engine: Engine, name: str = "scheduler", ttl: float = 30.0) -> None:
        self.engine = engine
        self.name = name
        self.ttl = dt.timedelta(seconds=ttl)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._conn: Connection | None = None
        self.held = False

    @property
    def _key(self) -> int:
        return zlib.crc32(f"pingan:{self.name}".encode())

    def try_acquire(self, now: dt.datetime | None = None) -> bool:
        now = now or dt.datetime.now(dt.UTC)
        if self.engine.dialect.name == "postgresql":
            if self._conn is None:
                self._conn = self.engine.connect()
            got = bool(
                self._conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}
                ).scalar()
            )
            self._conn.commit()
            self.held = got
            return got
        try:
            with Session(self.engine) as s, s.begin():
                row = s.get(SchedulerLock, self.name)
                if row is None:
                    s.add(SchedulerLock(name=self.name, holder=self.holder, heartbeat_at=now))
                elif row.holder == self.holder or row.heartbeat_at < now - self.ttl:
                    row.holder = self.holder
                    row.heartbeat_at = now
                else:
                    self.held = False
                    return False
        except (IntegrityError, OperationalError):
            # Another process wrote the row between our read and write: it won this round.
            self.held = False
            return False
        self.held = True
        return True

    def refresh(self, now: dt.datetime | None = None) -> bool:
        """Keep the lock; False if it was lost (another process took an expired row)."""
        if self.engine.dialect.name == "postgresql":
            return self.held
        return self.try_acquire(now)

    def release(self) -> None:
        if self.engine.dialect.name == "postgresql":
            if self._conn is not None:
                if self.held:
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                    self._conn.commit()
                self._conn.close()
                self._conn = None
        elif self.held:
            with Session(self.engine) as s, s.begin():
                s.execute(
                    delete(SchedulerLock).where(
                        SchedulerLock.name == self.name, SchedulerLock.holder == self.holder
                    )
                )
        self.held = False

    def current_holder(self) -> str | None:
        with Session(self.engine) as s:
            row = s.get(SchedulerLock, self.name)
            return row.holder if row else None


def lock_weekly_cap(session: Session, week_start: dt.date) -> None:
    """Serialise every expansion's cap check for one week until `session`'s transaction ends.

    The weekly cap is read (messages per resident) and then written (new messages): two
    expansions doing that at once would each see a resident under the cap. On PostgreSQL this
    takes a transaction-scoped advisory lock for the week; on SQLite it turns the transaction
    into a write transaction at once (`BEGIN IMMEDIATE`), which SQLite grants to one
    connection at a time. Call it first in the transaction.
    """
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(f"pingan:weekly-cap:{week_start.isoformat()}".encode())
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
