"""The report's manual columns (households visited, leaflets, banners, ...), validated."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import Any

from scheduler.config import District
from scheduler.exceptions import InputFileError, PingAnError, UnknownName
from scheduler.periods import Month
from scheduler.store import activities as store
from scheduler.textfiles import decode_file

# English column, the form's Chinese header (001 attachment 7).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("households_visited", "走访村(社)住户(户)"),
    ("leaflets", "发放倡议书、平安宣传手册、小礼品(份)"),
    ("banners", "悬挂横幅(条)"),
    ("boards", "设置平安宣传栏、LED显示屏(块)"),
    ("wechat_posts", "推送平安宣传公众号(期)"),
    ("questionnaires", "发放模拟问卷(份)"),
    ("volunteer_activities", "开展平安志愿活动(次)"),
    ("other", "其他"),
    ("description", "活动开展情况"),
)
TEXT_FIELDS = ("other", "description")


def check_month(month: str) -> str:
    """The month as YYYY-MM (InvalidMonth, a PingAnError, if it is not one)."""
    return str(Month.parse(month))


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """Counts are non-negative integers; text stays text. Raises ValueError with the reason."""
    out: dict[str, Any] = {}
    for key, _label in COLUMNS:
        value = values.get(key)
        if value is None or value == "":
            continue
        if key in TEXT_FIELDS:
            out[key] = str(value).strip()
            continue
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ValueError(f"{key}: {value!r} is not a whole number") from None
        if number < 0:
            raise ValueError(f"{key}: {number} is negative")
        out[key] = number
    return out


def add(
    engine: Any,
    district: District,
    town: str,
    month: str,
    values: dict[str, Any],
    *,
    now: dt.datetime,
) -> str:
    town_id = district.find_town(town).id
    try:
        clean = validate(values)
    except ValueError as exc:
        raise PingAnError(str(exc)) from None
    store.upsert_activity(engine, town_id, check_month(month), clean, now=now)
    return town_id


def import_file(
    engine: Any, district: District, path: Path, *, now: dt.datetime
) -> tuple[int, list[str]]:
    """Rows: town, month and the columns (English or the form's Chinese headers)."""
    decoded = decode_file(path)
    if 1 in decoded.bad_lines:
        raise InputFileError(f"{path}, line 1: {decoded.bad_lines[1]}")
    reader = csv.DictReader(io.StringIO(decoded.text))
    header = {h.strip(): h for h in reader.fieldnames or []}
    names = {"town": ("town", "乡镇街道", "乡镇"), "month": ("month", "月份")}
    for key, label in COLUMNS:
        names[key] = (key, label)
    mapping = {k: next((header[n] for n in v if n in header), None) for k, v in names.items()}
    if mapping["town"] is None or mapping["month"] is None:
        raise InputFileError(f"{path}, line 1: needs columns town and month")
    done, problems = 0, []
    for line, row in enumerate(reader, start=2):
        if reader.line_num in decoded.bad_lines:  # never guessed in another encoding
            problems.append(f"{path}, line {line}: {decoded.bad_lines[reader.line_num]}")
            continue
        values = {k: row.get(v) for k, v in mapping.items() if v is not None}
        try:
            add(
                engine,
                district,
                str(values.pop("town") or ""),
                str(values.pop("month") or ""),
                values,
                now=now,
            )
            done += 1
        except (PingAnError, UnknownName) as exc:
            problems.append(f"{path}, line {line}: {exc}")
    return done, problems
