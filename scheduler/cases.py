"""Fraud cases and the must-reach rules of seed 003 (三必讲).

A village where a new case lost 100,000 yuan or more (whatever year it happened in), or where
3 or more cases happened within the counting period (PINGAN_ALERTS__CASE_COUNT_DAYS up to the
newest case, so it does not reset on 1 January), gets a local-case alert at the next allowed
sending time, at most once per PINGAN_ALERTS__PERIOD_DAYS. Rules are judged on the cases'
own dates, so a rehearsal (`cases import --clock`) of 2022's cases works in any year.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from scheduler.core import Core
from scheduler.exceptions import InputFileError, PingAnError
from scheduler.firings import Target
from scheduler.logs import get_logger
from scheduler.numbers import half_up
from scheduler.planner import Firing
from scheduler.sending_hours import next_allowed
from scheduler.store import cases as store
from scheduler.textfiles import decode_file

log = get_logger("scheduler.cases")

ALERT_EVENT = "fraud-case"
_COLUMNS = {
    "case_id": ("case_id", "案件编号", "编号"),
    "time": ("time", "occurred_at", "发案时间", "时间"),
    "amount": ("amount", "amount_yuan", "损失金额", "金额"),
    "fraud_type": ("fraud_type", "诈骗类型", "类型"),
    "place": ("place", "发案地", "地点"),
    "town": ("town", "乡镇", "镇街"),
    "village": ("village", "受骗人居住地", "村社", "村"),
}


@dataclass
class CaseImport:
    read: int = 0
    inserted: int = 0
    unchanged: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)


_AMOUNT = re.compile(
    r"^(?P<n>[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?)(?P<wan>万)?元?$"
)


def parse_amount(text: str) -> Decimal:
    """Yuan as the police write them: `100000`, `100,000.00`, `10万`, `10万元`, `1.5万`; kept
    to the fen (half up), never rounded to whole yuan (99,999.5 is not 100,000)."""
    raw = (text or "").strip().replace(" ", "").replace("，", ",")
    m = _AMOUNT.match(raw)
    if m is None:
        raise ValueError(
            f"amount {text!r} is not an amount of yuan (e.g. 100000, 100,000.00, 10万, 1.5万元)"
        )
    value = Decimal(m["n"].replace(",", ""))
    if m["wan"]:
        value *= 10_000
    return half_up(value, 2)


def amount_band(amount: Decimal | int) -> str:
    if amount >= 1_000_000:
        return "百万元以上"
    if amount >= 100_000:
        return "十万元以上"
    if amount >= 10_000:
        return "一万至十万元"
    return "一万元以下"


def parse_case(core: Core, row: dict[str, str], tz: Any) -> dict[str, Any]:
    """One CSV row as a fraud_cases row; raises ValueError with the reason."""
    case_id = (row.get("case_id") or "").strip()
    if not case_id:
        raise ValueError("case_id is empty")
    try:
        when = dt.datetime.fromisoformat((row.get("time") or "").strip())
    except ValueError:
        raise ValueError(f"time {row.get('time')!r} is not an ISO date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    if (row.get("amount") or "").strip().startswith("-"):
        raise ValueError("amount is negative")
    amount = parse_amount(row.get("amount") or "")
    district = core.district
    try:
        town = district.find_town(row.get("town") or "")
        village = district.find_village(town, row.get("village") or "")
    except PingAnError as exc:
        raise ValueError(str(exc)) from None
    return {
        "case_id": case_id,
        "occurred_at": when,
        "amount_yuan": amount,
        "fraud_type": (row.get("fraud_type") or "").strip() or "电信网络诈骗",
        "place": (row.get("place") or "").strip() or None,
        "town_id": town.id,
        "village_id": village.id,
        "imported_at": core.clock(),
    }


def import_cases(core: Core, path: Path) -> CaseImport:
    decoded = decode_file(path)
    if 1 in decoded.bad_lines:
        raise InputFileError(f"{path}, line 1: {decoded.bad_lines[1]}")
    reader = csv.DictReader(io.StringIO(decoded.text))
    header = {h.strip(): h for h in (reader.fieldnames or [])}
    mapping: dict[str, str] = {}
    for key, names in _COLUMNS.items():
        found = next((header[n] for n in names if n in header), None)
        if found:
            mapping[key] = found
    missing = [k for k in ("case_id", "time", "amount", "town", "village") if k not in mapping]
    if missing:
        raise InputFileError(f"{path}, line 1: missing columns {', '.join(missing)}")
    tz = core.settings.tz
    result = CaseImport()
    rows = []
    for line_no, raw in enumerate(reader, start=2):
        result.read += 1
        if reader.line_num in decoded.bad_lines:  # never guessed in another encoding
            result.rejected.append({"line": line_no, "reason": decoded.bad_lines[reader.line_num]})
            continue
        row = {k: raw.get(v) or "" for k, v in mapping.items()}
        try:
            rows.append(parse_case(core, row, tz))
        except ValueError as exc:
            result.rejected.append({"line": line_no, "reason": str(exc)})
    return record_cases(core, rows, result)


def record_cases(
    core: Core, rows: list[dict[str, Any]], result: CaseImport | None = None
) -> CaseImport:
    """Store new cases and schedule the alerts they trigger (also used by the HTTP API)."""
    result = result or CaseImport(read=len(rows))
    inserted = set(store.insert_cases(core.engine, rows))
    result.inserted += len(inserted)
    result.unchanged += len(rows) - len(inserted)
    by_village: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["case_id"] in inserted:
            by_village.setdefault((r["town_id"], r["village_id"]), []).append(r)
    for (town_id, village_id), new in sorted(by_village.items()):
        alert = check_village(core, town_id, village_id, new)
        if alert:
            result.alerts.append(alert)
    return result


def must_reach_rule(
    core: Core, town_id: str, village_id: str, new_cases: Sequence[dict[str, Any]] = ()
) -> tuple[str, str] | None:
    """(rule, case_id of the case to name) if the village crosses a must-reach rule: a new case
    of ≥ single_loss_yuan (no calendar cut), or ≥ case_count cases within case_count_days up to
    the newest case. Without new cases, the village's cases up to now are judged."""
    alerts = core.settings.alerts
    big = [c for c in new_cases if Decimal(c["amount_yuan"]) >= alerts.single_loss_yuan]
    if big:
        return "single_loss", max(big, key=lambda c: (Decimal(c["amount_yuan"]), c["case_id"]))[
            "case_id"
        ]
    newest = max((c["occurred_at"] for c in new_cases), default=core.clock())
    since = newest - dt.timedelta(days=alerts.case_count_days)
    count, biggest = store.village_case_stats(core.engine, town_id, village_id, since, until=newest)
    latest = store.latest_case(core.engine, town_id, village_id, since, until=newest)
    if latest is None:
        return None
    if not new_cases and biggest >= alerts.single_loss_yuan:
        return "single_loss", latest.case_id
    if count >= alerts.case_count:
        return "case_count", latest.case_id
    return None


def check_village(
    core: Core, town_id: str, village_id: str, new_cases: Sequence[dict[str, Any]] = ()
) -> dict[str, Any] | None:
    """Schedule an alert if the village crosses a must-reach rule and had none this period."""
    settings = core.settings
    tz = settings.tz
    now = core.clock()
    found = must_reach_rule(core, town_id, village_id, new_cases)
    if found is None:
        return None
    rule, case_id = found
    campaign = core.campaigns.for_event(ALERT_EVENT)
    if campaign is None:
        log.warning("alert.no_campaign", town=town_id, village=village_id, rule=rule)
        return None
    latest = store.get_case(core.engine, case_id)
    target = Target(
        town=town_id,
        village=village_id,
        rule=rule,
        extra={
            "fraud_type": latest.fraud_type,
            "amount_band": amount_band(latest.amount_yuan),
            "case_date": latest.occurred_at.astimezone(tz).date().isoformat(),
        },
    )
    at = next_allowed(now, settings.allowed_hours, tz).replace(microsecond=0)
    firing = Firing.alert(campaign, at, target)
    last = store.last_alert(core.engine, firing.key)
    if last is not None and now - last < dt.timedelta(days=settings.alerts.period_days):
        log.info("alert.recent", town=town_id, village=village_id, last=last.isoformat())
        return None
    result = core.planner().fire(firing)
    log.info(
        "alert.scheduled",
        town=town_id,
        village=village_id,
        rule=rule,
        case=case_id,
        largest_loss=str(latest.amount_yuan),
        occurrence_id=result.occurrence_id,
        queued=result.queued,
        at=at.isoformat(),
    )
    return {
        "town": town_id,
        "village": village_id,
        "rule": rule,
        "at": at.isoformat(),
        "occurrence_id": result.occurrence_id,
        "queued": result.queued,
    }
