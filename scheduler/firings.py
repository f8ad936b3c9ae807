"""Typed firings: what fired a campaign (its kind) and whom the occurrence is aimed at.

An occurrence's `target` column holds `Target.to_json()`, readable JSON with the same keys rows
written before carried (town, village, rule, window, since, until, limit, extra), so old rows
parse unchanged. The occurrence key (`name`, `name:rule/town`, `name:town/village`) is built
here in one place and never parsed back: the campaign an occurrence belongs to is found by its
name prefix against the campaigns that exist.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class FiringKind(enum.StrEnum):
    """Stored as its value in `occurrences.kind` (the strings rows already carry)."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"
    TOPUP = "topup"
    ALERT = "alert"


@dataclass(frozen=True)
class Target:
    """Whom an occurrence reaches, beyond its campaign's audience.

    A top-up: one town, at most `limit` residents not yet messaged in [since, until) of the
    rule's window. A case alert: one village, with the case's values (`extra`) for the text.
    """

    town: str | None = None
    village: str | None = None
    rule: str | None = None
    window: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    limit: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def topup_window(self) -> tuple[dt.datetime, dt.datetime] | None:
        if self.since is None or self.until is None:
            return None
        return self.since, self.until

    def to_json(self) -> dict[str, Any]:
        """The column's JSON: only the keys that are set, datetimes as ISO strings."""
        out: dict[str, Any] = {}
        for key in ("town", "village", "rule", "window"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.since is not None:
            out["since"] = self.since.isoformat()
        if self.until is not None:
            out["until"] = self.until.isoformat()
        if self.limit is not None:
            out["limit"] = self.limit
        if self.extra:
            out["extra"] = dict(self.extra)
        return out

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | Target | None) -> Target:
        """From the column (a dict as written by any version; empty or None: no target)."""
        if isinstance(raw, Target):
            return raw
        if not raw:
            return cls()

        def text(key: str) -> str | None:
            value = raw.get(key)
            return None if value in (None, "") else str(value)

        def when(key: str) -> dt.datetime | None:
            value = raw.get(key)
            if value in (None, ""):
                return None
            return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)

        limit = raw.get("limit")
        extra = raw.get("extra") or {}
        return cls(
            town=text("town"),
            village=text("village"),
            rule=text("rule"),
            window=text("window"),
            since=when("since"),
            until=when("until"),
            limit=None if limit is None else int(limit),
            extra={str(k): str(v) for k, v in dict(extra).items()},
        )


def scheduled_key(campaign: str) -> str:
    return campaign


def topup_key(campaign: str, rule: str, town: str) -> str:
    return f"{campaign}:{rule}/{town}"


def alert_key(campaign: str, town: str, village: str) -> str:
    return f"{campaign}:{town}/{village}"


def campaign_name_of(key: str, names: Iterable[str]) -> str | None:
    """The campaign (of `names`) an occurrence key belongs to: the key itself, or the longest
    name it starts with followed by ':'."""
    best: str | None = None
    for name in names:
        if key == name:
            return name
        if key.startswith(name + ":") and (best is None or len(name) > len(best)):
            best = name
    return best
