"""Importing recipient lists: streamed CSV, any encoding Chinese Excel writes, nothing lost.

Every row is either imported (upserted by phone) or written to a rejects file beside the input
with its line number and reason; the import never stops at a bad row.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Engine

from scheduler.campaigns import SEGMENTS
from scheduler.config import District
from scheduler.exceptions import InputFileError, InvalidPhoneNumber, UnknownName
from scheduler.phones import CARRIERS, carrier_of, normalize
from scheduler.store.recipients import stats, upsert_recipients

CHUNK_ROWS = 5000
COLUMNS: dict[str, tuple[str, ...]] = {
    "phone": ("phone", "mobile", "手机号", "手机号码", "电话", "联系电话"),
    "town": ("town", "乡镇", "镇街", "乡镇街道", "镇"),
    "village": ("village", "村社", "村", "社区", "村(社区)"),
    "name": ("name", "姓名"),
    "household": ("household", "户号", "户"),
    "carrier": ("carrier", "运营商"),
    "residence": ("residence", "户籍", "居住类型", "人口类型"),
    "segments": ("segments", "标签", "人群"),
}
REQUIRED = ("phone", "town", "village")
CARRIER_NAMES = {
    "移动": "mobile",
    "中国移动": "mobile",
    "联通": "unicom",
    "中国联通": "unicom",
    "电信": "telecom",
    "中国电信": "telecom",
    "广电": "broadnet",
    "中国广电": "broadnet",
}
RESIDENCE_NAMES = {
    "registered": "registered",
    "户籍": "registered",
    "户籍人口": "registered",
    "migrant": "migrant",
    "流动": "migrant",
    "流动人口": "migrant",
}


@dataclass
class ImportSummary:
    file: str
    encoding: str
    rows: int = 0
    imported: int = 0
    updated: int = 0
    rejected: int = 0
    by_town: Counter[str] = field(default_factory=Counter)
    by_carrier: Counter[str] = field(default_factory=Counter)
    rejects_file: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "encoding": self.encoding,
            "rows": self.rows,
            "imported": self.imported,
            "updated": self.updated,
            "rejected": self.rejected,
            "by_town": dict(sorted(self.by_town.items())),
            "by_carrier": dict(sorted(self.by_carrier.items())),
            "rejects_file": self.rejects_file,
            "seconds": round(self.seconds, 2),
        }


def detect_encoding(head: bytes) -> str:
    """utf-8-sig, utf-8 or gb18030 (a superset of GBK, what Chinese Excel writes)."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        return "gb18030"


class _CountingReader(io.RawIOBase):
    """Counts bytes read, for the progress bar."""

    def __init__(self, raw: BinaryIO, on_read: Callable[[int], None] | None) -> None:
        self.raw = raw
        self.on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if self.on_read and n:
            self.on_read(n)
        return n


def _header_map(header: list[str], path: Path) -> dict[str, int]:
    cleaned = [h.strip().lower() for h in header]
    mapping: dict[str, int] = {}
    for key, names in COLUMNS.items():
        for i, h in enumerate(cleaned):
            if h in names:
                mapping[key] = i
                break
    missing = [k for k in REQUIRED if k not in mapping]
    if missing:
        raise InputFileError(
            f"{path}, line 1: missing column(s) {', '.join(missing)} (header: {', '.join(header)})"
        )
    return mapping


class RowChecker:
    """Turns one CSV row into a recipient row, or raises ValueError with the reason."""

    def __init__(self, district: District) -> None:
        self.district = district
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self, get: Callable[[str], str]) -> dict[str, Any]:
        try:
            phone = normalize(get("phone"))
        except InvalidPhoneNumber as exc:
            raise ValueError(str(exc)) from None
        try:
            town = self.district.find_town(get("town"))
            village = self.district.find_village(town, get("village"))
        except UnknownName as exc:
            raise ValueError(str(exc)) from None
        carrier_raw = get("carrier").strip()
        if carrier_raw:
            carrier = CARRIER_NAMES.get(carrier_raw, carrier_raw.lower())
            if carrier not in CARRIERS:
                raise ValueError(f"unknown carrier {carrier_raw!r}")
        else:
            carrier = carrier_of(phone)
        residence_raw = get("residence").strip()
        residence = None
        if residence_raw:
            residence = RESIDENCE_NAMES.get(residence_raw.lower())
            if residence is None:
                raise ValueError(f"unknown residence {residence_raw!r} (registered or migrant)")
        segs = [s.strip() for s in get("segments").replace("；", ";").split(";") if s.strip()]
        unknown = [s for s in segs if s not in SEGMENTS]
        if unknown:
            raise ValueError(f"unknown segment(s) {', '.join(unknown)}")
        return {
            "phone": phone,
            "name": get("name").strip() or None,
            "town_id": town.id,
            "village_id": village.id,
            "household": get("household").strip() or None,
            "carrier": carrier,
            "residence": residence,
            "segments": f";{';'.join(dict.fromkeys(segs))};" if segs else "",
            "created_at": self.now,
            "updated_at": self.now,
        }


def rejects_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.rejects.csv")


def _rows(text: io.TextIOBase, path: Path) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(text)
    try:
        for row in reader:
            yield reader.line_num, row
    except UnicodeDecodeError as exc:
        raise InputFileError(
            f"{path}, near line {reader.line_num + 1}: not {exc.encoding} "
            f"({exc.reason}); give the file's encoding with --encoding"
        ) from None
    except csv.Error as exc:
        raise InputFileError(f"{path}, line {reader.line_num}: {exc}") from None


def import_recipients_file(
    engine: Engine,
    district: District,
    path: Path,
    *,
    encoding: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Import a recipient CSV; rejected rows go to `<name>.rejects.csv` beside it."""
    began = time.perf_counter()
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise InputFileError(f"{path}: cannot open: {exc.strerror}") from None
    with raw:
        enc = encoding or detect_encoding(raw.read(65536))
        raw.seek(0)
        try:
            codecs.lookup(enc)
        except LookupError:
            raise InputFileError(f"unknown encoding {enc!r}") from None
        counting = io.BufferedReader(_CountingReader(raw, on_progress), buffer_size=1 << 20)
        text = io.TextIOWrapper(counting, encoding=enc, newline="")
        summary = ImportSummary(file=str(path), encoding=enc)
        rows = _rows(text, path)
        try:
            _, header = next(rows)
        except StopIteration:
            raise InputFileError(f"{path}: the file is empty") from None
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        mapping = _header_map(header, path)
        check = RowChecker(district)
        reject_file = rejects_path(path)
        reject_fh: Any = None
        writer: Any = None
        chunk: dict[str, dict[str, Any]] = {}

        def flush() -> None:
            inserted, updated = upsert_recipients(engine, list(chunk.values()))
            summary.imported += inserted
            summary.updated += updated
            chunk.clear()

        try:
            for line, row in rows:
                if not any(cell.strip() for cell in row):
                    continue
                summary.rows += 1

                def get(key: str, row: list[str] = row) -> str:
                    i = mapping.get(key)
                    return row[i] if i is not None and i < len(row) else ""

                try:
                    rec = check(get)
                except ValueError as exc:
                    summary.rejected += 1
                    if writer is None:
                        reject_fh = reject_file.open("w", encoding="utf-8-sig", newline="")
                        writer = csv.writer(reject_fh)
                        writer.writerow(["line", "reason", *header])
                    writer.writerow([line, str(exc), *row])
                    continue
                summary.by_town[rec["town_id"]] += 1
                summary.by_carrier[rec["carrier"]] += 1
                if rec["phone"] in chunk:
                    # The same person twice in one file: the later row wins, as an update.
                    summary.updated += 1
                chunk[rec["phone"]] = rec
                if len(chunk) >= CHUNK_ROWS:
                    flush()
            if chunk:
                flush()
        finally:
            if reject_fh is not None:
                reject_fh.close()
        if writer is not None:
            summary.rejects_file = str(reject_file)
        elif reject_file.exists():
            reject_file.unlink()  # a stale file from an earlier run would mislead
    summary.seconds = time.perf_counter() - began
    return summary


def import_recipients(engine: Engine, district: District, path: Path) -> int:
    """Import for the simulator and scripts: how many recipients the database now holds."""
    import_recipients_file(engine, district, path)
    return int(stats(engine)["total"])
