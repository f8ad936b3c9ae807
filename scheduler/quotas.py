"""Quota rules (config/quotas.yaml), their windows and targets, and attainment against them.

A rule names a subject (town, village, carrier), a window (week, month, or one cumulative
window with milestones), an active period, a measure and a base. Targets are base × share
rounded half up, with the total computed from the total base (the table of seed 003).
Counting is asked of `scheduler.store.quotas`; nothing here builds SQL.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Engine

from scheduler.config import District, parse_model, read_yaml
from scheduler.exceptions import ConfigError, UnknownName
from scheduler.models import MessageState
from scheduler.numbers import half_up, half_up_int
from scheduler.periods import Month
from scheduler.store import quotas as store
from scheduler.store import sends as sends_store

QUOTAS_FILE = "quotas.yaml"

SubjectKind = Literal["town", "village", "carrier"]
WindowKind = Literal["week", "month", "cumulative"]
Measure = str  # a key of MEASURES
BaseKind = Literal["population", "households", "subscribers"]
Sources = Literal["own", "reported", "both"]
TOTAL_NAME = "合计"


# --------------------------------------------------------------------------- measures


@dataclass(frozen=True)
class CountQuery:
    """What a measure counts over: local days first..last, grouped by a subject kind."""

    by: SubjectKind
    first: dt.date
    last: dt.date
    tz: ZoneInfo
    towns: tuple[str, ...] = ()
    by_residence: bool = False

    @property
    def start(self) -> dt.datetime:
        return local_midnight(self.first, self.tz)

    @property
    def end(self) -> dt.datetime:
        return local_midnight(self.last + dt.timedelta(days=1), self.tz)


Counter = Callable[[Engine, CountQuery], dict[tuple[str, ...], int]]


@dataclass(frozen=True)
class MeasureDef:
    """A measure quotas can count. Adding one is one entry in MEASURES below: the rule schema,
    `quota status`, the report and the API read its id, labels and counter from here."""

    id: str
    label: str  # English with the Chinese term, for the CLI
    zh: str  # the report's 口径 column
    own: Counter  # the service's own sends
    reported: str | None = None  # the reported-sends column counted; None: nobody reports it
    people: bool = False  # distinct residents (can be split by residence type)


def _counter_column(pick: int) -> Counter:
    def count(engine: Engine, q: CountQuery) -> dict[tuple[str, ...], int]:
        sums = store.sum_counters(
            engine, first_day=q.first, last_day=q.last, by=q.by, towns=q.towns or None
        )
        return {k: v[pick] for k, v in sums.items()}

    return count


def _people(states: tuple[MessageState, ...]) -> Counter:
    def count(engine: Engine, q: CountQuery) -> dict[tuple[str, ...], int]:
        return store.people_reached(
            engine,
            start=q.start,
            end=q.end,
            by=q.by,
            towns=q.towns or None,
            by_residence=q.by_residence,
            states=states,
        )

    return count


# A resident is reached when a message to them went out (sent or delivered), not when their
# only message failed or came back undelivered.
REACHED_STATES = (MessageState.SENT, MessageState.DELIVERED)

MEASURES: dict[str, MeasureDef] = {
    m.id: m
    for m in (
        MeasureDef(
            "messages_sent",
            "messages sent (播发短信数量)",
            "发送条数",
            _counter_column(0),
            reported="messages_sent",
        ),
        MeasureDef(
            "messages_delivered",
            "messages delivered (送达短信数量)",
            "送达条数",
            _counter_column(1),
        ),
        MeasureDef(
            "people_reached",
            "people reached, residents sent a message (覆盖人数)",
            "覆盖人数",
            _people(REACHED_STATES),
            reported="people_reached",
            people=True,
        ),
        MeasureDef(
            "people_delivered",
            "people delivered, residents with a delivered message (送达人数)",
            "送达人数",
            _people((MessageState.DELIVERED,)),
            people=True,
        ),
    )
}
MEASURE_LABELS: dict[str, str] = {k: m.label for k, m in MEASURES.items()}


# --------------------------------------------------------------------------- rules


def _share(value: Any) -> Any:
    """Accept `0.08`, `"8%"` or `"0.08"`; floats go through str so 0.08 stays exactly 0.08."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return Decimal(value.strip()[:-1].strip()) / 100
        except InvalidOperation:
            # A ValueError, so pydantic reports it with the file, line and field.
            raise ValueError(f"not a share: {value!r} (write 0.08 or 8%)") from None
    if isinstance(value, float):
        return Decimal(str(value))
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Milestone(_Frozen):
    """A cumulative rule's checkpoint: `share` of the base reached by the end of day `by`."""

    by: dt.date
    share: Decimal = Field(gt=0, le=1)

    _parse_share = field_validator("share", mode="before")(_share)


class QuotaRule(_Frozen):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = ""
    source: str = ""
    subject: SubjectKind
    window: WindowKind
    start: dt.date
    end: dt.date
    measure: Measure
    base: BaseKind
    share: Decimal | None = Field(None, gt=0, le=1)
    # Which sends count: the service's own, those carriers and towns report (`pingan sends
    # import`), or both. Default: reported for carrier rules (carriers send on their own,
    # seed 001), own for the rest.
    sources: Sources | None = None
    milestones: tuple[Milestone, ...] = ()
    # Split village subjects by residence type: registered residents are the village's
    # responsibility, migrants the police station's (seed 003).
    by_residence: bool = False
    # Limit the subjects to these towns (ids; names are resolved by load_rules).
    towns: tuple[str, ...] = ()

    _parse_share = field_validator("share", mode="before")(_share)

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, value: str) -> str:
        if value not in MEASURES:
            raise ValueError(f"unknown measure {value!r} (known: {', '.join(MEASURES)})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> QuotaRule:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        if self.window == "cumulative":
            if not self.milestones:
                raise ValueError("a cumulative rule needs milestones")
            if self.share is not None:
                raise ValueError("a cumulative rule takes its share from its last milestone")
            days = [m.by for m in self.milestones]
            if days != sorted(set(days)):
                raise ValueError("milestone dates must increase")
            shares = [m.share for m in self.milestones]
            if shares != sorted(shares):
                raise ValueError("milestone shares must not decrease")
            if days[0] < self.start or days[-1] > self.end:
                raise ValueError("milestones must lie within start..end")
        else:
            if self.share is None:
                raise ValueError(f"a {self.window} rule needs a share")
            if self.milestones:
                raise ValueError("only cumulative rules have milestones")
        if (self.subject == "carrier") != (self.base == "subscribers"):
            raise ValueError("carrier rules, and only they, count against subscribers")
        if self.base == "households" and self.subject != "town":
            raise ValueError("households are known per town only")
        if self.by_residence and self.subject != "village":
            raise ValueError("by_residence applies to village rules")
        if self.by_residence and not MEASURES[self.measure].people:
            raise ValueError("by_residence counts people (messages carry no residence)")
        if self.sources in ("reported", "both") and MEASURES[self.measure].reported is None:
            raise ValueError(f"reported sends carry no {self.measure}")
        if self.towns and self.subject == "carrier":
            raise ValueError("carrier rules cannot be limited to towns")
        return self

    @property
    def final_share(self) -> Decimal:
        if self.share is not None:
            return self.share
        return self.milestones[-1].share

    @property
    def measure_label(self) -> str:
        return MEASURES[self.measure].label

    @property
    def counted_sources(self) -> Sources:
        if self.sources is not None:
            return self.sources
        if self.subject == "carrier" and MEASURES[self.measure].reported is not None:
            return "reported"
        return "own"

    def as_subject(self, kind: SubjectKind) -> QuotaRule:
        """The same rule counted at another grain (a town rule village by village, say)."""
        if kind == self.subject:
            return self
        data = self.model_dump()
        data["subject"] = kind
        try:
            return QuotaRule.model_validate(data)
        except ValueError as exc:
            raise UnknownName(f"rule {self.id} cannot be counted by {kind}: {exc}") from None


class QuotaFile(_Frozen):
    rules: tuple[QuotaRule, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> QuotaFile:
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate rule ids: {', '.join(dupes)}")
        return self


# Parsed rules by (file, its bytes, district): every status call reads the file (so an edit
# counts at once) but parses and validates it only when its bytes change.
_PARSED: dict[tuple[Path, bytes, int], tuple[District, tuple[QuotaRule, ...]]] = {}


def load_rules(config_dir: Path, district: District) -> list[QuotaRule]:
    """The rules of config_dir/quotas.yaml, checked against the district; none if no file."""
    path = config_dir / QUOTAS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    key = (path, raw, id(district))
    hit = _PARSED.get(key)
    if hit is not None and hit[0] is district:
        return list(hit[1])
    rules = _parse_rules(path, district)
    if len(_PARSED) >= 16:
        _PARSED.clear()
    if path.exists() and path.read_bytes() == raw:  # not rewritten while it was parsed
        _PARSED[key] = (district, tuple(rules))
    return rules


def _parse_rules(path: Path, district: District) -> list[QuotaRule]:
    if not path.exists():
        return []
    data = read_yaml(path)
    if data is None:
        return []
    parsed = parse_model(path, QuotaFile, data)
    rules = []
    problems = []
    for i, rule in enumerate(parsed.rules):
        resolved = []
        for j, key in enumerate(rule.towns):
            try:
                resolved.append(district.find_town(key).id)
            except UnknownName as exc:
                problems.append(f"rules[{i}].towns[{j}]: {exc}")
        rule = rule.model_copy(update={"towns": tuple(resolved)})
        if rule.by_residence:
            for town, village in _villages(rule, district):
                if village.registered is None:
                    problems.append(
                        f"rules[{i}].by_residence: village {town.id}/{village.id} has no "
                        "registered/migrant split in the district file"
                    )
        rules.append(rule)
    if problems:
        raise ConfigError(path, problems)
    return rules


def find_rule(rules: Sequence[QuotaRule], rule_id: str) -> QuotaRule:
    for rule in rules:
        if rule.id == rule_id:
            return rule
    known = ", ".join(r.id for r in rules) or "none configured"
    raise UnknownName(f"unknown quota rule {rule_id!r} (known: {known})")


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """A span of local days, both ends included; milestones only for cumulative rules."""

    label: str
    start: dt.date
    end: dt.date
    milestones: tuple[Milestone, ...] = ()

    def contains(self, day: dt.date) -> bool:
        return self.start <= day <= self.end

    def bounds(self, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
        """The window as UTC instants [start, end): local midnight to the midnight after end."""
        return local_midnight(self.start, tz), local_midnight(self.end + dt.timedelta(days=1), tz)


def local_midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(dt.UTC)


def week_window(monday: dt.date) -> Window:
    year, week, _ = monday.isocalendar()
    return Window(f"{year}-W{week:02d}", monday, monday + dt.timedelta(days=6))


def parse_week(label: str) -> dt.date:
    """The Monday of an ISO week label such as 2022-W41."""
    try:
        return dt.date.fromisoformat(label.strip().upper() + "-1")
    except ValueError:
        raise ValueError(f"a week looks like 2022-W41, got {label!r}") from None


def parse_month(label: str) -> dt.date:
    """The first day of a month label such as 2022-10 (InvalidMonth, a ValueError, if not)."""
    return Month.parse(label).first_day


def _month_end(first: dt.date) -> dt.date:
    nxt = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return nxt - dt.timedelta(days=1)


def windows(rule: QuotaRule, *, tz: ZoneInfo | None = None) -> list[Window]:
    """Every window of a rule. Weeks run Monday–Sunday and belong to the rule when their Monday
    lies in its active period (so 2022-W44, 31 Oct–6 Nov, is October's last week); months are
    clipped to the active period. Days are local days of the district, hence no tz arithmetic."""
    if rule.window == "week":
        monday = rule.start + dt.timedelta(days=(7 - rule.start.weekday()) % 7)
        out = []
        while monday <= rule.end:
            out.append(week_window(monday))
            monday += dt.timedelta(days=7)
        return out
    if rule.window == "month":
        out = []
        first = rule.start.replace(day=1)
        while first <= rule.end:
            out.append(
                Window(f"{first:%Y-%m}", max(first, rule.start), min(_month_end(first), rule.end))
            )
            first = _month_end(first) + dt.timedelta(days=1)
        return out
    label = f"{rule.start:%Y-%m}..{rule.end:%Y-%m}"
    return [Window(label, rule.start, rule.end, rule.milestones)]


def window_containing(rule: QuotaRule, day: dt.date, tz: ZoneInfo | None = None) -> Window | None:
    for w in windows(rule, tz=tz):
        if w.contains(day):
            return w
    return None


def window_labelled(rule: QuotaRule, label: str) -> Window | None:
    for w in windows(rule):
        if w.label == label:
            return w
    return None


# --------------------------------------------------------------------------- targets


@functools.lru_cache(maxsize=1 << 16)
def target_of(base: int, share: Decimal) -> int:
    """base × share rounded half up (the province's tables round 0.5 up, not to even).
    Cached: a district's bases and a rule's shares are the same on every call."""
    return half_up_int(Decimal(base) * share)


def days_in_month(day: dt.date) -> int:
    return _month_end(day.replace(day=1)).day


def weekly_share_of_month(month_target: int, month: dt.date) -> int:
    """A monthly target spread to one week by the month's real days, half up:
    November's 1065 × 7 / 30 = 248.5 → 249."""
    return half_up_int(Decimal(month_target) * 7 / days_in_month(month))


def share_label(share: Decimal) -> str:
    pct = (share * 100).normalize()
    return f"{pct:f}%"


@dataclass(frozen=True)
class Subject:
    kind: SubjectKind
    town_id: str = ""
    village_id: str = ""
    carrier: str = ""
    residence: str = ""
    name: str = ""
    base: int = 0

    @property
    def key(self) -> str:
        if self.kind == "town":
            return self.town_id
        if self.kind == "carrier":
            return self.carrier
        key = f"{self.town_id}/{self.village_id}"
        return f"{key}/{self.residence}" if self.residence else key

    @property
    def count_key(self) -> tuple[str, ...]:
        """The key the store's counts use for this subject."""
        if self.kind == "town":
            return (self.town_id,)
        if self.kind == "carrier":
            return (self.carrier,)
        if self.residence:
            return (self.town_id, self.village_id, self.residence)
        return (self.town_id, self.village_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "name": self.name,
            "town_id": self.town_id or None,
            "village_id": self.village_id or None,
            "carrier": self.carrier or None,
            "residence": self.residence or None,
        }


_RESIDENCE_NAMES = {"registered": "户籍", "migrant": "流动"}


def _villages(rule: QuotaRule, district: District) -> list[tuple[Any, Any]]:
    return [(t, v) for t, v in district.villages() if not rule.towns or t.id in rule.towns]


_SUBJECTS: dict[tuple[int, int], tuple[QuotaRule, District, tuple[Subject, ...]]] = {}


def _subjects_of(rule: QuotaRule, district: District) -> tuple[Subject, ...]:
    """`subjects`, kept per (rule, district) object: both are immutable once loaded, and the
    rules come from `load_rules`' cache, so a status call builds its 1,000 subjects once."""
    hit = _SUBJECTS.get((id(rule), id(district)))
    if hit is not None and hit[0] is rule and hit[1] is district:
        return hit[2]
    out = tuple(subjects(rule, district))
    if len(_SUBJECTS) >= 64:
        _SUBJECTS.clear()
    _SUBJECTS[(id(rule), id(district))] = (rule, district, out)
    return out


def subjects(rule: QuotaRule, district: District) -> list[Subject]:
    """The subjects of a rule in configuration order, each with its base."""
    if rule.subject == "carrier":
        return [
            Subject("carrier", carrier=c.id, name=c.name, base=c.subscribers)
            for c in district.carriers
        ]
    if rule.subject == "town":
        return [
            Subject(
                "town",
                town_id=t.id,
                name=t.name,
                base=t.households if rule.base == "households" else t.population,
            )
            for t in district.towns
            if not rule.towns or t.id in rule.towns
        ]
    out = []
    for t, v in _villages(rule, district):
        if not rule.by_residence:
            out.append(Subject("village", t.id, v.id, name=v.name, base=v.population))
            continue
        for residence in ("registered", "migrant"):
            out.append(
                Subject(
                    "village",
                    t.id,
                    v.id,
                    residence=residence,
                    name=f"{v.name}({_RESIDENCE_NAMES[residence]})",
                    base=getattr(v, residence) or 0,
                )
            )
    return out


@dataclass(frozen=True)
class TargetColumn:
    label: str
    share: Decimal
    by: dt.date | None = None


@dataclass(frozen=True)
class TargetRow:
    subject: Subject | None  # None on the total row
    name: str
    base: int
    targets: tuple[int, ...]


@dataclass(frozen=True)
class TargetTable:
    rule: QuotaRule
    columns: tuple[TargetColumn, ...]
    rows: tuple[TargetRow, ...]
    total: TargetRow

    def to_dict(self) -> dict[str, Any]:
        def row(r: TargetRow) -> dict[str, Any]:
            return {
                "subject": r.subject.key if r.subject else None,
                "name": r.name,
                "base": r.base,
                "targets": list(r.targets),
            }

        return {
            "rule": self.rule.id,
            "name": self.rule.name,
            "subject": self.rule.subject,
            "window": self.rule.window,
            "measure": self.rule.measure,
            "base": self.rule.base,
            "columns": [
                {"label": c.label, "share": str(c.share), "by": c.by.isoformat() if c.by else None}
                for c in self.columns
            ],
            "rows": [row(r) for r in self.rows],
            "total": row(self.total),
        }


def target_columns(rule: QuotaRule) -> tuple[TargetColumn, ...]:
    if rule.window == "cumulative":
        return tuple(
            TargetColumn(f"by {m.by:%Y-%m-%d} ({share_label(m.share)})", m.share, m.by)
            for m in rule.milestones
        )
    assert rule.share is not None
    per = "per week" if rule.window == "week" else "per month"
    return (TargetColumn(f"{per} ({share_label(rule.share)})", rule.share),)


def targets(rule: QuotaRule, district: District) -> TargetTable:
    """The target table; the total row is the total base × share, not a sum of rounded rows."""
    columns = target_columns(rule)
    rows = tuple(
        TargetRow(s, s.name, s.base, tuple(target_of(s.base, c.share) for c in columns))
        for s in subjects(rule, district)
    )
    total_base = sum(r.base for r in rows)
    total = TargetRow(
        None, TOTAL_NAME, total_base, tuple(target_of(total_base, c.share) for c in columns)
    )
    return TargetTable(rule, columns, rows, total)


# --------------------------------------------------------------------------- attainment


class Status(enum.StrEnum):
    MET = "met"
    ON_TRACK = "on_track"
    BEHIND = "behind"


@dataclass(frozen=True)
class MilestoneResult:
    by: dt.date
    share: Decimal
    target: int
    actual: int | None  # counted up to the end of `by`, once that day is over
    met: bool | None


@dataclass(frozen=True)
class AttainmentRow:
    rule_id: str
    window: str
    measure: Measure
    subject: Subject
    base: int
    target: int
    actual: int  # what the rule counts: own, reported or their sum (rule.counted_sources)
    attainment: Decimal  # percent of target, one decimal
    shortfall: int
    elapsed: Decimal  # share of the window gone by at `now`, 0..1
    expected: int  # what the target's pace asks for by now
    pace: Decimal | None  # actual as a percent of expected; None before the window starts
    projected: int | None  # end-of-window figure at the current rate
    status: Status
    rank: int = 0
    laggard: bool = False
    milestones: tuple[MilestoneResult, ...] = ()
    own: int = 0  # the service's own sends
    reported: int = 0  # sends carriers and towns reported

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "rule": self.rule_id,
            "window": self.window,
            "measure": self.measure,
            "subject": self.subject.to_dict(),
            "base": self.base,
            "target": self.target,
            "own": self.own,
            "reported": self.reported,
            "actual": self.actual,
            "attainment_pct": float(self.attainment),
            "shortfall": self.shortfall,
            "elapsed": float(self.elapsed),
            "expected": self.expected,
            "pace_pct": None if self.pace is None else float(self.pace),
            "projected": self.projected,
            "status": str(self.status),
            "laggard": self.laggard,
            "milestones": [
                {
                    "by": m.by.isoformat(),
                    "share": str(m.share),
                    "target": m.target,
                    "actual": m.actual,
                    "met": m.met,
                }
                for m in self.milestones
            ],
        }


_TENTH = Decimal("0.1")
_ONE = Decimal(1)


def _pct(num: int, den: Decimal | int) -> Decimal:
    """num / den in percent, one decimal, half up (`half_up(…, 1)` with its quantum made once:
    this runs twice per subject)."""
    if den == 0:
        return Decimal(100) if num >= 0 else Decimal(0)
    return (Decimal(num) * 100 / Decimal(den)).quantize(_TENTH, rounding=ROUND_HALF_UP)


def elapsed_share(window: Window, now: dt.datetime, tz: ZoneInfo) -> Decimal:
    start, end = window.bounds(tz)
    if now <= start:
        return Decimal(0)
    if now >= end:
        return Decimal(1)
    return Decimal((now - start).total_seconds()) / Decimal((end - start).total_seconds())


def expected_by(
    window: Window, base: int, final_target: int, now: dt.datetime, tz: ZoneInfo
) -> Decimal:
    """The figure the target's pace asks for at `now`: linear over the window, or piecewise
    linear through the milestones of a cumulative window (0 at its start)."""
    return _expected(_Clock.of(window, now, tz), base, final_target)


@dataclass(frozen=True)
class _Clock:
    """A window seen at `now`: its start, the share gone by and the milestones' instants,
    computed once for all of a window's subjects instead of once per subject."""

    window: Window
    now: dt.datetime
    start: dt.datetime
    elapsed: Decimal
    marks: tuple[tuple[dt.datetime, Decimal], ...]  # (end of milestone day, share)
    elapsed_shown: Decimal  # elapsed to four decimals, as rows report it

    @classmethod
    def of(cls, window: Window, now: dt.datetime, tz: ZoneInfo) -> _Clock:
        start, _ = window.bounds(tz)
        marks = tuple(
            (local_midnight(m.by + dt.timedelta(days=1), tz), m.share) for m in window.milestones
        )
        elapsed = elapsed_share(window, now, tz)
        return cls(window, now, start, elapsed, marks, half_up(elapsed, 4))


def _expected(clock: _Clock, base: int, final_target: int) -> Decimal:
    if not clock.marks:
        return Decimal(final_target) * clock.elapsed
    now = clock.now
    prev_t, prev_v = clock.start, Decimal(0)
    for t, share in clock.marks:
        v = Decimal(target_of(base, share))
        if now < t:
            if now <= prev_t:
                return prev_v
            frac = Decimal((now - prev_t).total_seconds()) / Decimal((t - prev_t).total_seconds())
            return prev_v + (v - prev_v) * frac
        prev_t, prev_v = t, v
    return prev_v


def evaluate(
    rule: QuotaRule,
    window: Window,
    subject: Subject,
    actual: int,
    *,
    now: dt.datetime,
    tz: ZoneInfo,
    milestone_actuals: Sequence[int | None] = (),
    own: int | None = None,
    reported: int = 0,
) -> AttainmentRow:
    """One subject's attainment from its count: the pure part of `attainment`."""
    fields = _evaluate(
        rule, _Clock.of(window, now, tz), subject, actual, milestone_actuals, own, reported
    )
    return AttainmentRow(**fields)


def _evaluate(
    rule: QuotaRule,
    clock: _Clock,
    subject: Subject,
    actual: int,
    milestone_actuals: Sequence[int | None],
    own: int | None,
    reported: int,
) -> dict[str, Any]:
    """The fields of one AttainmentRow (rank and laggard left to `_ranked`): a dict, so a
    window's rows are built once each after ranking rather than copied twice."""
    window = clock.window
    target = target_of(subject.base, rule.final_share)
    elapsed = clock.elapsed
    expected_d = _expected(clock, subject.base, target)
    expected = int(expected_d.quantize(_ONE, rounding=ROUND_HALF_UP))
    if actual >= target:
        status = Status.MET
    elif elapsed < 1 and actual >= expected:
        status = Status.ON_TRACK
    else:
        status = Status.BEHIND
    projected = (
        int((Decimal(actual) / elapsed).quantize(_ONE, rounding=ROUND_HALF_UP))
        if elapsed > 0
        else None
    )
    milestones = []
    for i, m in enumerate(window.milestones):
        m_actual = milestone_actuals[i] if i < len(milestone_actuals) else None
        m_target = target_of(subject.base, m.share)
        milestones.append(
            MilestoneResult(
                m.by,
                m.share,
                m_target,
                m_actual,
                None if m_actual is None else m_actual >= m_target,
            )
        )
    return {
        "rule_id": rule.id,
        "window": window.label,
        "measure": rule.measure,
        "subject": subject,
        "base": subject.base,
        "target": target,
        "actual": actual,
        "attainment": _pct(actual, target),
        "shortfall": max(0, target - actual),
        "elapsed": clock.elapsed_shown,
        "expected": expected,
        "pace": _pct(actual, expected_d) if expected_d > 0 else None,
        "projected": projected,
        "status": status,
        "milestones": tuple(milestones),
        "own": actual if own is None else own,
        "reported": reported,
    }


def rank(rows: Sequence[AttainmentRow], *, bottom: int = 0) -> list[AttainmentRow]:
    """Rows best first by attainment, competition ranks (1, 2, 2, 4). Laggards: every row
    behind pace, and, when `bottom` > 0, the bottom `bottom` ranks of those not yet met."""
    places = _places([(r.attainment, r.shortfall, r.subject.key, r.status) for r in rows], bottom)
    return [replace(rows[i], rank=place, laggard=lag) for i, place, lag in places]


def _places(
    keys: Sequence[tuple[Decimal, int, str, Status]], bottom: int
) -> list[tuple[int, int, bool]]:
    """(index into keys, rank, laggard) best first: the ranking rule of `rank`, on the keys."""
    order = sorted(range(len(keys)), key=lambda i: (-keys[i][0], keys[i][1], keys[i][2]))
    n = len(order)
    out: list[tuple[int, int, bool]] = []
    prev_att: Decimal | None = None
    place = 0
    for pos, i in enumerate(order):
        att, _, _, status = keys[i]
        if not out or att != prev_att:
            place = pos + 1
        prev_att = att
        laggard = status is Status.BEHIND or (
            bottom > 0 and status is not Status.MET and place > n - bottom
        )
        out.append((i, place, laggard))
    return out


def _ranked(fields: Sequence[dict[str, Any]], bottom: int) -> list[AttainmentRow]:
    keys = [(f["attainment"], f["shortfall"], f["subject"].key, f["status"]) for f in fields]
    return [
        AttainmentRow(**fields[i], rank=place, laggard=lag)
        for i, place, lag in _places(keys, bottom)
    ]


@dataclass(frozen=True)
class Counts:
    """One window's counts per subject key: own sends and reported sends apart."""

    own: dict[tuple[str, ...], int]
    reported: dict[tuple[str, ...], int]

    def of(self, rule: QuotaRule, key: tuple[str, ...]) -> tuple[int, int, int]:
        """(own, reported, counted) for a subject; counted follows the rule's sources."""
        own, reported = self.own.get(key, 0), self.reported.get(key, 0)
        sources = rule.counted_sources
        counted = own if sources == "own" else reported if sources == "reported" else own + reported
        return own, reported, counted


def count(engine: Engine, rule: QuotaRule, first: dt.date, last: dt.date, tz: ZoneInfo) -> Counts:
    """A rule's measure over local days first..last, own and reported sends apart. Own sends
    count on the local day they were sent (scheduler.store.counters.local_day); a reported
    day or week counts in the window holding its last day."""
    measure = MEASURES[rule.measure]
    q = CountQuery(rule.subject, first, last, tz, rule.towns, rule.by_residence)
    reported: dict[tuple[str, ...], int] = {}
    if measure.reported is not None and not rule.by_residence:
        reported = sends_store.sum_reported(
            engine,
            first_day=first,
            last_day=last,
            by=rule.subject,
            column=measure.reported,
            towns=rule.towns or None,
        )
    return Counts(measure.own(engine, q), reported)


def attainment(
    engine: Engine,
    rule: QuotaRule,
    window: Window,
    district: District,
    *,
    now: dt.datetime,
    tz: ZoneInfo,
    bottom: int = 0,
) -> list[AttainmentRow]:
    """Every subject's attainment of `rule` in `window` at `now`, ranked, laggards marked."""
    counts = count(engine, rule, window.start, window.end, tz)
    today = now.astimezone(tz).date()
    milestone_counts: list[Counts | None] = [
        count(engine, rule, window.start, m.by, tz) if m.by < today else None
        for m in window.milestones
    ]
    clock = _Clock.of(window, now, tz)
    fields = []
    for s in _subjects_of(rule, district):
        key = s.count_key
        m_actuals = [None if c is None else c.of(rule, key)[2] for c in milestone_counts]
        own, reported, counted = counts.of(rule, key)
        fields.append(_evaluate(rule, clock, s, counted, m_actuals, own, reported))
    return _ranked(fields, bottom)


# --------------------------------------------------------------------------- status of many rules


@dataclass(frozen=True)
class RuleStatus:
    """One rule in one window, its subjects ranked: a table of `pingan quota status`."""

    rule: QuotaRule
    window: Window
    rows: tuple[AttainmentRow, ...]
    open: bool = False  # the window has not ended yet at the `now` it was judged at (进行中)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.id,
            "name": self.rule.name,
            "window": {
                "label": self.window.label,
                "start": self.window.start.isoformat(),
                "end": self.window.end.isoformat(),
                "open": self.open,
            },
            "measure": self.rule.measure,
            "measure_label": self.rule.measure_label,
            "sources": self.rule.counted_sources,
            "subject": self.rule.subject,
            "base": self.rule.base,
            "share": str(self.rule.final_share),
            "rows": [r.to_dict() for r in self.rows],
        }


def windows_overlapping(rule: QuotaRule, first: dt.date, last: dt.date) -> list[Window]:
    """The rule's windows sharing a day with first..last (a report month, say)."""
    return [w for w in windows(rule) if w.start <= last and w.end >= first]


def select_windows(
    rules: Sequence[QuotaRule], *, day: dt.date | None = None, label: str | None = None
) -> list[tuple[QuotaRule, Window]]:
    """Each rule's window labelled `label` (2022-W41, 2022-10), or containing `day`; rules
    without one are left out."""
    out = []
    for r in rules:
        w = window_labelled(r, label) if label is not None else None
        if label is None and day is not None:
            w = window_containing(r, day)
        if w is not None:
            out.append((r, w))
    return out


def status(
    engine: Engine,
    pairs: Sequence[tuple[QuotaRule, Window]],
    district: District,
    *,
    now: dt.datetime,
    tz: ZoneInfo,
    bottom: int = 0,
) -> list[RuleStatus]:
    """Attainment of each (rule, window) at `now`: the one function that judges a window, for
    the CLI, the HTTP API and the monthly report alike (so they cannot disagree)."""
    return [
        RuleStatus(
            r,
            w,
            tuple(attainment(engine, r, w, district, now=now, tz=tz, bottom=bottom)),
            open=is_open(w, now, tz),
        )
        for r, w in pairs
    ]


def is_open(window: Window, now: dt.datetime, tz: ZoneInfo) -> bool:
    """Has the window begun and not yet ended at `now`? Its figures can still change."""
    start, end = window.bounds(tz)
    return start <= now < end
