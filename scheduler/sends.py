"""Sends carriers and towns report for their own channels (seed 001: each carrier's free weekly
safety SMS to its subscribers; towns' own messaging), recorded beside the service's own sends.

A row names its source (a carrier or a town), its subject (a carrier, a town, or a village of
a town), a day (2022-10-12) or ISO week (2022-W41), the messages sent, optionally the people
reached, and a note. A town reports its own town or villages; a carrier reports itself or the
towns and villages it sent to. The same source, subject and period imported again updates the
row; twice in one file is refused. Quota rules choose whether reported sends count
(`sources` in config/quotas.yaml).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.config import Carrier, District
from scheduler.core import Core
from scheduler.exceptions import InputFileError, UnknownName
from scheduler.quotas import parse_week, week_window
from scheduler.store import sends as store
from scheduler.textfiles import read_text

COLUMNS: dict[str, tuple[str, ...]] = {
    "source": ("source", "报送单位", "来源"),
    "subject": ("subject", "对象", "发送对象"),
    "village": ("village", "村社", "村"),
    "period": ("period", "日期或周", "周期", "日期"),
    "messages_sent": ("messages_sent", "发送条数", "短信条数"),
    "people_reached": ("people_reached", "覆盖人数"),
    "note": ("note", "备注"),
}
REQUIRED = ("source", "subject", "period", "messages_sent")
_CARRIER_SHORT = {"移动": "mobile", "联通": "unicom", "电信": "telecom", "广电": "broadnet"}


@dataclass
class SendsImport:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "inserted": self.inserted,
            "updated": self.updated,
            "rejected": self.rejected,
        }


def _carrier(district: District, name: str) -> Carrier | None:
    key = _CARRIER_SHORT.get(name, name)
    return next((c for c in district.carriers if key in (c.id, c.name)), None)


def _count(value: str, name: str, *, required: bool) -> int | None:
    text = (value or "").strip().replace(",", "")
    if not text:
        if required:
            raise ValueError(f"{name} is empty")
        return None
    if not re.fullmatch(r"-?[0-9]+", text):
        raise ValueError(f"{name} {value!r} is not a whole number")
    number = int(text)
    if number < 0:
        raise ValueError(f"{name} {number} is negative")
    return number


def _period(value: str) -> tuple[str, dt.date, dt.date]:
    text = (value or "").strip().upper()
    if "W" in text:
        try:
            w = week_window(parse_week(text))
        except ValueError:
            raise ValueError(f"period {value!r}: a week looks like 2022-W41") from None
        return w.label, w.start, w.end
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"period {value!r} is neither a day (2022-10-12) nor a week (2022-W41)"
        ) from None
    return day.isoformat(), day, day


def parse_send(district: District, row: Mapping[str, str], now: dt.datetime) -> dict[str, Any]:
    """One reported row as a reported_sends row; raises ValueError with the reason."""
    source_name = (row.get("source") or "").strip()
    subject_name = (row.get("subject") or "").strip()
    village_name = (row.get("village") or "").strip()
    if not source_name:
        raise ValueError("source is empty")
    if not subject_name:
        raise ValueError("subject is empty")
    out: dict[str, Any] = {"town_id": "", "village_id": "", "carrier": ""}
    src_carrier = _carrier(district, source_name)
    if src_carrier is not None:
        out.update(source_kind="carrier", source_id=src_carrier.id)
    else:
        try:
            out.update(source_kind="town", source_id=district.find_town(source_name).id)
        except UnknownName:
            raise ValueError(f"unknown source {source_name!r}: not a carrier or town") from None

    subj_carrier = _carrier(district, subject_name)
    if subj_carrier is not None:
        if village_name:
            raise ValueError("a carrier subject has no village")
        if out["source_kind"] != "carrier" or out["source_id"] != subj_carrier.id:
            raise ValueError(f"only {subj_carrier.name} reports its own sends as a carrier")
        out.update(subject_kind="carrier", subject_key=subj_carrier.id, carrier=subj_carrier.id)
    else:
        try:
            town = district.find_town(subject_name)
            village = district.find_village(town, village_name) if village_name else None
        except UnknownName as exc:
            raise ValueError(f"unknown subject: {exc}") from None
        if out["source_kind"] == "town" and out["source_id"] != town.id:
            raise ValueError(
                f"a town reports its own sends: {source_name} cannot report {town.name}"
            )
        if out["source_kind"] == "carrier":
            out["carrier"] = out["source_id"]
        out["town_id"] = town.id
        if village is None:
            out.update(subject_kind="town", subject_key=town.id)
        else:
            out.update(
                subject_kind="village",
                subject_key=f"{town.id}/{village.id}",
                village_id=village.id,
            )

    out["period"], out["first_day"], out["last_day"] = _period(row.get("period") or "")
    out["messages_sent"] = _count(row.get("messages_sent") or "", "messages_sent", required=True)
    out["people_reached"] = _count(
        row.get("people_reached") or "", "people_reached", required=False
    )
    out["note"] = (row.get("note") or "").strip()
    out["imported_at"] = now
    return out


def _key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in store.KEY_COLUMNS)


def record_sends(
    core: Core, items: Iterable[tuple[str, Mapping[str, str]]], result: SendsImport | None = None
) -> SendsImport:
    """Validate (where, row) pairs and store the good ones in one transaction; rejects carry
    `where` (a file line or a request index) and the reason. Used by the CLI and POST
    /api/sends."""
    result = result or SendsImport()
    now = core.clock()
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[Any, ...], str] = {}
    for where, raw in items:
        result.read += 1
        try:
            row = parse_send(core.district, raw, now)
        except ValueError as exc:
            result.rejected.append({"line": where, "reason": str(exc)})
            continue
        key = _key(row)
        if key in seen:
            result.rejected.append(
                {
                    "line": where,
                    "reason": f"duplicate of {seen[key]}: the same source, subject and period "
                    f"({row['source_id']}, {row['subject_key']}, {row['period']})",
                }
            )
            continue
        seen[key] = where
        rows.append(row)
    inserted, updated = store.upsert_sends(core.engine, rows)
    result.inserted += inserted
    result.updated += updated
    return result


def import_sends(core: Core, path: Path) -> SendsImport:
    """`pingan sends import FILE.csv`: English or Chinese headers (see COLUMNS)."""
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text))
    header = {h.strip(): h for h in (reader.fieldnames or [])}
    mapping: dict[str, str] = {}
    for key, names in COLUMNS.items():
        found = next((header[n] for n in names if n in header), None)
        if found:
            mapping[key] = found
    missing = [k for k in REQUIRED if k not in mapping]
    if missing:
        raise InputFileError(f"{path}, line 1: missing columns {', '.join(missing)}")
    items = (
        (str(line), {k: raw.get(v) or "" for k, v in mapping.items()})
        for line, raw in enumerate(reader, start=2)
    )
    return record_sends(core, items)
