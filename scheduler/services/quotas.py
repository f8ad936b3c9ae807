"""Quota use cases: the target tables, and attainment in one window.

`quota_status` is the one place a window is picked, whoever asks (`pingan quota status`,
GET /api/quota, the console): a week or month label, else the windows containing a day, else
today in the district's zone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from scheduler import quotas as q
from scheduler.core import Core
from scheduler.exceptions import PingAnError
from scheduler.periods import Month

SUBJECT_KINDS = ("town", "village", "carrier")


class InvalidWindow(PingAnError, ValueError):
    """Not a week (2022-W41) or a month (2022-10)."""


def week_label(text: str) -> str:
    """`2022-W41` (any case) as the rules label it; ValueError if it is not an ISO week."""
    return q.week_window(q.parse_week(text)).label


def month_label(text: str) -> str:
    """`2022-10` as the rules label it; ValueError (InvalidMonth) if it is not a month."""
    return str(Month.parse(text))


def window_label(text: str) -> str:
    """A week or a month label, normalised; InvalidWindow if it is neither."""
    for parse in (week_label, month_label):
        try:
            return parse(text)
        except ValueError:
            continue
    raise InvalidWindow(f"a window is a week like 2022-W41 or a month like 2022-10, got {text!r}")


@dataclass(frozen=True)
class QuotaStatusReport:
    """The rules' status in the chosen window: by label, or the windows containing `day`."""

    label: str | None
    day: dt.date | None
    statuses: tuple[q.RuleStatus, ...]

    @property
    def where(self) -> str:
        """What was asked for, to say that no rule has a window there."""
        return self.label or (self.day.isoformat() if self.day else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.label,
            "day": self.day.isoformat() if self.day else None,
            "rules": self.rules_json(),
        }

    def rules_json(self) -> list[dict[str, Any]]:
        return [st.to_dict() for st in self.statuses]


def load_rules(core: Core, rule_id: str | None = None) -> list[q.QuotaRule]:
    """Every configured rule, or the one named (UnknownName if there is none)."""
    rules = q.load_rules(core.settings.config_dir, core.district)
    return [q.find_rule(rules, rule_id)] if rule_id else rules


def quota_targets(core: Core, rule_id: str | None = None) -> list[q.TargetTable]:
    return [q.targets(r, core.district) for r in load_rules(core, rule_id)]


def quota_status(
    core: Core,
    rule_id: str | None = None,
    window: str | None = None,
    on: dt.date | None = None,
    *,
    by: str | None = None,
    bottom: int = 0,
) -> QuotaStatusReport:
    """Attainment of each rule (or the one named) in one window.

    `window` is a week or month label (it wins over `on`); without it, the windows containing
    `on`, or today in the district's zone. `by` counts at another grain: the one rule named
    at that grain, or every rule of that subject. An unknown rule raises UnknownName.
    """
    if by is not None and by not in SUBJECT_KINDS:
        raise PingAnError(f"count by {', '.join(SUBJECT_KINDS)}, not {by!r}")
    chosen = load_rules(core, rule_id)
    if by is not None:
        kind: q.SubjectKind = by  # type: ignore[assignment]
        chosen = [
            r.as_subject(kind) if rule_id else r for r in chosen if rule_id or r.subject == kind
        ]
    tz = core.settings.tz
    now = core.clock()
    label = window_label(window) if window is not None else None
    day = None if label is not None else (on or now.astimezone(tz).date())
    pairs = q.select_windows(chosen, day=day, label=label)
    statuses = q.status(core.engine, pairs, core.district, now=now, tz=tz, bottom=bottom)
    return QuotaStatusReport(label, day, tuple(statuses))
