"""Engines, sessions and migrations. SQL itself lives in the store modules."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from scheduler.models import UTCDateTime

MIGRATIONS = Path(__file__).parent / "migrations"
_UTC = UTCDateTime()
_DIALECTS: dict[str, Any] = {
    "sqlite": sqlite.dialect(),
    "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
}

_upgraded: set[str] = set()
_lock = threading.Lock()


_SYNCHRONOUS = {"off": "OFF", "normal": "NORMAL", "full": "FULL"}


def make_engine(url: str, *, sqlite_synchronous: str = "normal", **kwargs: Any) -> Engine:
    """An engine tuned for its backend: WAL and a busy timeout on SQLite, pre-ping on PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        synchronous = _SYNCHRONOUS[sqlite_synchronous]

        def pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        event.listen(engine, "connect", pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision`; safe to call on every start."""
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def ensure_schema(engine: Engine) -> None:
    """Upgrade once per process and URL: commands that need the database call this first."""
    key = engine.url.render_as_string(hide_password=False)
    with _lock:
        if key in _upgraded:
            return
        if current_revision(engine) != head_revision(engine):
            upgrade(engine)
        _upgraded.add(key)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def executemany(session: Session, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """One DBAPI executemany for a hot bulk path, written with `?` placeholders.

    SQLAlchemy's per-row parameter processing cost as much as the database work itself on the
    outbox's bulk writes; callers pass values already in storage form (see `db_time_cache`).
    """
    if not rows:
        return
    conn = session.connection()
    if conn.dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    conn.exec_driver_sql(sql, list(rows))


def db_time_cache(dialect_name: str) -> Callable[[dt.datetime | None], Any]:
    """A converter of aware datetimes to the form UTCDateTime stores, for `executemany`;
    remembered per value, since a batch shares a few timestamps across its rows."""
    dialect = _DIALECTS[dialect_name]
    seen: dict[dt.datetime | None, Any] = {None: None}

    def convert(value: dt.datetime | None) -> Any:
        try:
            return seen[value]
        except KeyError:
            seen[value] = out = _UTC.process_bind_param(value, dialect)
            return out

    return convert


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
