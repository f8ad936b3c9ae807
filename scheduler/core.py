"""The one core the CLI, the HTTP layer and the scheduler service share.

It holds the settings and opens, on first use, what they name: the database (upgraded to the
current schema), the district configuration and the template catalogue.
"""

from __future__ import annotations

from functools import cached_property

from sqlalchemy import Engine

from scheduler.config import District, load_district
from scheduler.db import ensure_schema, make_engine
from scheduler.settings import Settings, load_settings


class Core:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()

    @cached_property
    def engine(self) -> Engine:
        engine = make_engine(self.settings.effective_database_url)
        ensure_schema(engine)
        return engine

    @cached_property
    def district(self) -> District:
        return load_district(self.settings.config_dir)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
