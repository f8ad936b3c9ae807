"""Campaign use cases: what fires when, run one now, reload the definitions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scheduler.core import Core
from scheduler.exceptions import PingAnError
from scheduler.services.occurrences import (
    FiringResult,
    OccurrenceView,
    last_occurrences,
    local_minute,
)


@dataclass(frozen=True)
class CampaignView:
    name: str
    channel: str
    schedule: str | None
    active: str
    content: str | None
    next: tuple[str | None, ...]
    last: OccurrenceView | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "channel": self.channel,
            "schedule": self.schedule,
            "active": self.active,
            "content": self.content,
            "next": list(self.next),
            "last": self.last.to_dict() if self.last else None,
        }


def list_campaigns(core: Core) -> list[CampaignView]:
    """Each campaign with its window, next firing times and last occurrence."""
    tz = core.settings.tz
    planner = core.planner()
    last = last_occurrences(core)
    out = []
    for camp in core.campaigns.all:
        out.append(
            CampaignView(
                name=camp.name,
                channel=camp.channel,
                schedule=camp.schedule.cron
                or (camp.schedule.at.isoformat(" ") if camp.schedule.at else None)
                or f"on {camp.schedule.event}",
                active=f"{camp.active.start}..{camp.active.end}",
                content=camp.template or camp.pool or ",".join(camp.template_names()),
                next=tuple(
                    local_minute(t, tz) for t in planner.next_fire_times(camp, core.clock())
                ),
                last=last.get(camp.name),
            )
        )
    return out


def parse_local_time(text: str, tz: Any) -> dt.datetime:
    """An ISO date-time; without an offset, local to the district."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise PingAnError(f"--at {text!r} is not an ISO date-time") from None
    return when.replace(tzinfo=tz) if when.tzinfo is None else when


def run_campaign(
    core: Core,
    name: str,
    at: dt.datetime | None = None,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> FiringResult:
    """Expand one occurrence now (or at `at`), as the scheduler would; again, nothing changes."""
    from scheduler.firings import FiringKind
    from scheduler.planner import Firing

    campaign = core.campaigns.get(name)
    when = at if at is not None else core.clock().replace(microsecond=0)
    planner = core.planner()
    if on_progress is not None:
        planner.expander.on_progress = on_progress
    result = planner.fire(Firing.scheduled(campaign, when.astimezone(dt.UTC), FiringKind.MANUAL))
    return FiringResult.of(result)


def reload_campaigns(core: Core) -> int:
    """Re-read and validate the definitions; how many campaigns are valid."""
    core.reload()
    return len(core.campaigns.all)
