"""The one core the CLI, the HTTP layer and the scheduler service share.

It holds the settings and opens, on first use, what they name: the database (upgraded to the
current schema), the district configuration, the campaigns and the template catalogue.
"""

from __future__ import annotations

import datetime as dt
import threading
from functools import cached_property

from sqlalchemy import Engine

from scheduler.campaigns import Campaigns, load_campaigns
from scheduler.clock import Clock, system_clock
from scheduler.config import District, load_district
from scheduler.db import ensure_schema, make_engine
from scheduler.expansion import Expander
from scheduler.gateway_templates import GatewayTemplates, load_gateway_templates
from scheduler.planner import Planner
from scheduler.settings import Settings, load_settings
from scheduler.templating import Catalogue

__all__ = ["Clock", "Core", "system_clock"]


class Core:
    def __init__(self, settings: Settings | None = None, *, clock: Clock = system_clock) -> None:
        self.settings = settings or load_settings()
        self.clock = clock
        self.stop = threading.Event()

    def new_engine(self) -> Engine:
        """An engine on the configured database, not upgraded (`pingan db` upgrades itself)."""
        return make_engine(
            self.settings.effective_database_url,
            sqlite_synchronous=self.settings.sqlite_synchronous,
        )

    @cached_property
    def engine(self) -> Engine:
        engine = self.new_engine()
        ensure_schema(engine)
        return engine

    @cached_property
    def district(self) -> District:
        return load_district(self.settings.config_dir)

    @cached_property
    def catalogue(self) -> Catalogue:
        return Catalogue(
            self.settings.templates_dir,
            self.district,
            max_segments=self.settings.max_sms_segments,
            clock=self.clock,
            tz=self.settings.tz,
        )

    @cached_property
    def gateway_templates(self) -> GatewayTemplates:
        return load_gateway_templates(self.settings.config_dir)

    @cached_property
    def campaigns(self) -> Campaigns:
        return load_campaigns(self.settings.config_dir, self.district)

    def expander(self, *, chunk_size: int = 5000) -> Expander:
        return Expander(
            self.engine,
            self.district,
            self.catalogue,
            tz=self.settings.tz,
            weekly_cap=self.settings.weekly_cap,
            data_dir=self.settings.data_dir,
            chunk_size=chunk_size,
            stop=self.stop,
            clock=self.clock,
            gateway_templates=self.gateway_templates,
        )

    def planner(self, *, chunk_size: int = 5000) -> Planner:
        return Planner(
            self.engine,
            self.campaigns,
            self.expander(chunk_size=chunk_size),
            tz=self.settings.tz,
            grace=dt.timedelta(hours=self.settings.misfire_grace_hours),
        )

    def reload(self) -> None:
        """Re-read the configuration files (campaigns, district, templates) on next use."""
        for name in ("district", "catalogue", "campaigns", "gateway_templates"):
            self.__dict__.pop(name, None)
        # Validate now, so a bad edit is reported at reload time rather than at the next firing.
        self.campaigns  # noqa: B018

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
