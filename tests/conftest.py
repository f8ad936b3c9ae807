"""Shared fixtures: a clean environment, and the same database tests on SQLite and PostgreSQL.

PostgreSQL tests run when PINGAN_TEST_POSTGRES_URL names a server (`.ci/run` starts one);
otherwise they skip. Each test gets its own schema there, and its own SQLite file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from scheduler.core import Core
from scheduler.db import make_engine, upgrade
from scheduler.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("PINGAN_TEST_POSTGRES_URL", "")
# Read before the autouse fixture below clears every PINGAN_* variable.


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's shell must not change a result."""
    for key in list(os.environ):
        if key.startswith("PINGAN_") or key in ("TWILIO_REGION", "TWILIO_EDGE"):
            monkeypatch.delenv(key, raising=False)


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'pingan.db'}"
        return
    if not PG_URL:
        pytest.skip("no PostgreSQL server (set PINGAN_TEST_POSTGRES_URL)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(PG_URL, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A database at the current schema."""
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=db_url,
        config_dir=ROOT / "config",
        templates_dir=ROOT / "templates" / "messages",
        log_format="json",
    )


@pytest.fixture
def core(settings: Settings) -> Iterator[Core]:
    c = Core(settings)
    yield c
    c.close()
