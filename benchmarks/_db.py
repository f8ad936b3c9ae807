"""Scratch databases for the benchmarks: SQLite files by default, PostgreSQL when given a URL.

Every variant of a benchmark starts from its own copy of the same prepared database, so no
variant measures another's leftovers. On SQLite a copy is a file copy; on PostgreSQL it is
`CREATE DATABASE … TEMPLATE` of the prepared one (the server copies the files), and every
database made here is dropped at the end.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from sqlalchemy import create_engine, make_url, text


class ScratchDatabases:
    """Named scratch databases under one work folder or one PostgreSQL server."""

    def __init__(self, work: Path, database_url: str | None) -> None:
        self.work = work
        self.base = database_url
        self.tag = uuid.uuid4().hex[:8]
        self.made: list[str] = []

    @property
    def postgres(self) -> bool:
        return self.base is not None and make_url(self.base).get_backend_name() == "postgresql"

    def url(self, name: str) -> str:
        """The URL of scratch database `name` (made by `fresh` or `copy`)."""
        if not self.postgres:
            return f"sqlite:///{self.work / f'{name}.db'}"
        assert self.base is not None
        return make_url(self.base).set(database=self._pg_name(name)).render_as_string(False)

    def fresh(self, name: str) -> str:
        """An empty database (the schema is made by whoever opens it first)."""
        if self.postgres:
            self._admin(f'CREATE DATABASE "{self._pg_name(name)}"')
            self.made.append(name)
        return self.url(name)

    def copy(self, source: str, name: str) -> str:
        """A copy of `source` as it is now."""
        if self.postgres:
            self._admin(
                f'CREATE DATABASE "{self._pg_name(name)}" TEMPLATE "{self._pg_name(source)}"'
            )
            self.made.append(name)
        else:
            shutil.copy(self.work / f"{source}.db", self.work / f"{name}.db")
        return self.url(name)

    def size_mb(self, name: str) -> float:
        if not self.postgres:
            return (self.work / f"{name}.db").stat().st_size / 1e6
        engine = create_engine(self.url(name))
        with engine.connect() as conn:
            size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
        engine.dispose()
        return float(size) / 1e6

    def drop_all(self) -> None:
        for name in self.made:
            self._admin(f'DROP DATABASE IF EXISTS "{self._pg_name(name)}" WITH (FORCE)')
        self.made.clear()

    def _pg_name(self, name: str) -> str:
        return f"pingan_bench_{self.tag}_{name}".replace("-", "_")

    def _admin(self, sql: str) -> None:
        assert self.base is not None
        engine = create_engine(self.base, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(sql))
        engine.dispose()


def describe(database_url: str | None) -> str:
    """The backend and its version, for the figures' machine line."""
    if database_url is None:
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    engine = create_engine(database_url)
    with engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar_one()
    engine.dispose()
    return f"PostgreSQL {version}"


def raw_connect(url: str) -> object:
    """A bare DBAPI connection (sqlite3 or psycopg) for the baselines, no SQLAlchemy."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        import sqlite3

        assert parsed.database
        conn = sqlite3.connect(parsed.database)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=OFF")
        return conn
    import psycopg

    return psycopg.connect(parsed.set(drivername="postgresql").render_as_string(False))
