"""Importing recipient lists: streamed CSV, any encoding Chinese Excel writes, nothing lost.

Every row is either imported (upserted by phone) or written to a rejects file beside the input
with its line number and reason (a bad value, a line that does not decode in the file's
encoding, an oversized line, a phone placed in two towns); the import never stops at a bad
row. Only the file itself being unreadable (missing, empty, no phone/town/village columns)
stops it.
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

from scheduler.cell_safety import neutralise_cell
from scheduler.config import SEGMENTS, District, Town, Village
from scheduler.exceptions import InputFileError, InvalidPhoneNumber, UnknownName
from scheduler.phones import CARRIERS, carrier_of, normalize
from scheduler.store.recipients import stats, towns_written_at, upsert_recipients
from scheduler.textfiles import REPLACEMENT, choose_encoding

CHUNK_ROWS = 5000
# A recipient row is well under 1 KB; a longer line is rejected alone, read without holding it.
MAX_LINE = 65_536
# Accepted header names per column (compared stripped and lower-cased).
COLUMNS: dict[str, tuple[str, ...]] = {
    "phone": ("phone", "mobile", "手机号", "手机号码", "手机", "电话", "电话号码", "联系电话"),
    "town": ("town", "乡镇", "镇街", "乡镇街道", "镇", "街道"),
    "village": ("village", "村社", "村", "社区", "村社区", "村(社区)", "村（社区）"),
    "name": ("name", "姓名"),
    "household": ("household", "户号", "户"),
    "carrier": ("carrier", "运营商"),
    "residence": ("residence", "户籍", "居住类型", "人口类型", "户籍/流动"),
    "segments": ("segments", "标签", "人群"),
}
REQUIRED = ("phone", "town", "village")
CARRIER_NAMES = {
    **{c: c for c in CARRIERS},
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
# Column widths of the recipients table: a longer cell is a bad row, not a failed chunk.
MAX_TEXT = 64


class RowError(ValueError):
    """Why one row was rejected."""


@dataclass
class ImportSummary:
    """What an import did; by_town and by_carrier count accepted rows."""

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
            "by_town": dict(sorted((+self.by_town).items())),
            "by_carrier": dict(sorted((+self.by_carrier).items())),
            "rejects_file": self.rejects_file,
            "seconds": round(self.seconds, 3),
        }


def detect_encoding(fh: BinaryIO) -> str:
    """utf-8-sig, utf-8 or gb18030, decided once for the file (textfiles.choose_encoding)."""
    return choose_encoding(fh)


def rejects_path(path: Path) -> Path:
    """`<stem>.rejects.csv` beside the input."""
    return path.with_name(f"{path.stem}.rejects.csv")


class _CountingReader(io.RawIOBase):
    """Reports bytes read, for a progress bar by bytes."""

    def __init__(self, raw: BinaryIO, on_read: Callable[[int], None] | None) -> None:
        self.raw = raw
        self.on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if self.on_read is not None and n:
            self.on_read(n)
        return n


def header_map(header: list[str], path: Path) -> dict[str, int]:
    """Column index per known column; raises InputFileError when a required one is missing."""
    cleaned = [h.strip().lstrip("\ufeff").strip().lower() for h in header]
    mapping: dict[str, int] = {}
    for key, names in COLUMNS.items():
        for i, h in enumerate(cleaned):
            if h in names:
                mapping[key] = i
                break
    missing = [k for k in REQUIRED if k not in mapping]
    if missing:
        raise InputFileError(
            f"{path}, line 1: missing column(s) {', '.join(missing)} in header "
            f"{', '.join(header)!r}; expected phone, town, village (or 手机号, 乡镇, 村社)"
        )
    return mapping


class RowChecker:
    """Turns one CSV row into a Recipient row dict, or raises RowError with the reason."""

    def __init__(self, district: District, mapping: dict[str, int]) -> None:
        self.district = district
        self.now = dt.datetime.now(dt.UTC)
        self.index = tuple(mapping.get(k, -1) for k in COLUMNS)
        self.width = max(mapping.values()) + 1
        self._villages: dict[tuple[str, str], tuple[Town, Village]] = {}

    def _place(self, town_key: str, village_key: str) -> tuple[Town, Village]:
        key = (town_key, village_key)
        found = self._villages.get(key)
        if found is None:
            try:
                town = self.district.find_town(town_key)
                found = (town, self.district.find_village(town, village_key))
            except UnknownName as exc:
                raise RowError(str(exc)) from None
            self._villages[key] = found
        return found

    def __call__(self, row: list[str]) -> dict[str, Any]:
        if len(row) < self.width:
            row = row + [""] * (self.width - len(row))
        phone_raw, town_raw, village_raw, name, household, carrier_raw, residence_raw, segs_raw = (
            row[i].strip() if i >= 0 else "" for i in self.index
        )
        try:
            phone = normalize(phone_raw)
        except InvalidPhoneNumber as exc:
            raise RowError(str(exc)) from None
        town, village = self._place(town_raw, village_raw)
        if carrier_raw:
            carrier = CARRIER_NAMES.get(carrier_raw) or CARRIER_NAMES.get(carrier_raw.lower())
            if carrier is None:
                raise RowError(
                    f"unknown carrier {carrier_raw!r} (mobile, unicom, telecom, broadnet "
                    "or 移动, 联通, 电信, 广电)"
                )
        else:
            carrier = carrier_of(phone)
        residence = None
        if residence_raw:
            residence = RESIDENCE_NAMES.get(residence_raw.lower())
            if residence is None:
                raise RowError(
                    f"unknown residence {residence_raw!r} (registered/户籍 or migrant/流动)"
                )
        segments = ""
        if segs_raw:
            segs = [s.strip() for s in segs_raw.replace("；", ";").split(";") if s.strip()]
            unknown = [s for s in segs if s not in SEGMENTS]
            if unknown:
                raise RowError(
                    f"unknown segment(s) {', '.join(unknown)}; known: {', '.join(sorted(SEGMENTS))}"
                )
            if segs:
                segments = f";{';'.join(dict.fromkeys(segs))};"
        for label, value in (("name", name), ("household", household)):
            if len(value) > MAX_TEXT:
                raise RowError(f"{label} longer than {MAX_TEXT} characters")
            if "\x00" in value:
                raise RowError(f"{label} holds a NUL character")
        return {
            "phone": phone,
            "name": name or None,
            "town_id": town.id,
            "village_id": village.id,
            "household": household or None,
            "carrier": carrier,
            "residence": residence,
            "segments": segments,
            "created_at": self.now,
            "updated_at": self.now,
        }


class _Lines:
    """The file's physical lines for csv.reader, none longer than `limit` characters.

    A longer line (a pasted document, a binary blob) is read through without holding it and
    handed on empty; its number is kept so that only its row is rejected.
    """

    def __init__(self, text: io.TextIOBase, limit: int) -> None:
        self.text = text
        self.limit = limit
        self.number = 0
        self.oversized: set[int] = set()
        self.last = ""

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.text.readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.number += 1
        if len(line) > self.limit and not line.endswith(("\n", "\r")):
            while (more := self.text.readline(self.limit)) and not more.endswith(("\n", "\r")):
                pass
            self.oversized.add(self.number)
            line = "\n"
        self.last = line
        return line

    def skip_rest_of_quoted_cell(self) -> None:
        """After csv's field limit broke a quoted cell spanning lines: read to its closing quote.

        No line is longer than `limit` (< csv's 131,072), so the cell began on an earlier line
        and an odd number of quotes on a line closes it (a doubled quote counts twice).
        """
        line = self.last
        while line.count('"') % 2 == 0:
            try:
                line = next(self)
            except StopIteration:
                return


def _rows(lines: _Lines, encoding: str) -> Iterator[tuple[int, list[str], str | None]]:
    """(line, cells, reason to reject or None) per CSV record; a broken record ends only itself."""
    reader = csv.reader(lines)
    previous = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "field limit" in str(exc):
                lines.skip_rest_of_quoted_cell()
            previous = lines.number
            yield lines.number, [], f"unreadable CSV record ({exc})"
            continue
        line = reader.line_num
        reason = None
        if any(n in lines.oversized for n in range(previous + 1, line + 1)):
            reason = f"line longer than {lines.limit} characters"
            row = []
        elif any(REPLACEMENT in cell for cell in row):
            reason = f"cannot decode as {encoding} (bytes shown as {REPLACEMENT})"
        previous = line
        yield line, row, reason


class _Rejects:
    """The rejects file, opened on the first bad row (UTF-8 with BOM, so Excel opens it).

    Cells are written as text (cell_safety): the file is opened in a spreadsheet.
    """

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path = path
        self.header = header
        self._fh: Any = None
        self._writer: Any = None

    def write(self, line: int, reason: str, row: list[str]) -> None:
        if self._writer is None:
            self._fh = self.path.open("w", encoding="utf-8-sig", newline="")
            self._writer = csv.writer(self._fh)
            self._writer.writerow([neutralise_cell(c) for c in ("line", "reason", *self.header)])
        self._writer.writerow([line, *(neutralise_cell(c) for c in (reason, *row))])

    @property
    def used(self) -> bool:
        return self._writer is not None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


@dataclass
class _Pending:
    """An accepted row waiting for its chunk's upsert, with what its reject would need."""

    rec: dict[str, Any]
    line: int
    row: list[str]


def import_recipients_file(
    engine: Engine,
    district: District,
    path: Path,
    *,
    encoding: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ImportSummary:
    """Import (upsert by phone) a recipient CSV, streaming it in chunks of `chunk_rows`.

    Rejected rows go to `<stem>.rejects.csv` beside the file (a stale one is removed when
    every row is good): bad values, lines that do not decode in the file's encoding, lines
    longer than MAX_LINE characters, broken CSV records. A phone twice in the file: in the
    same town the later row wins and counts as updated; in another town the later row is a
    conflict, rejected (the first is kept). `on_progress` receives byte counts as the file is
    read. Raises InputFileError when the file cannot be read at all.
    """
    began = time.perf_counter()
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise InputFileError(f"{path}: cannot open: {exc.strerror}") from None
    with raw:
        if encoding:
            try:
                enc = codecs.lookup(encoding).name
            except LookupError:
                raise InputFileError(f"{path}: unknown encoding {encoding!r}") from None
        else:
            enc = detect_encoding(raw)
        counting = io.BufferedReader(_CountingReader(raw, on_progress), buffer_size=1 << 20)
        text = io.TextIOWrapper(counting, encoding=enc, errors="replace", newline="")
        summary = ImportSummary(file=str(path), encoding=enc)
        rows = _rows(_Lines(text, MAX_LINE), enc)
        header = next((r for _line, r, _why in rows if any(cell.strip() for cell in r)), None)
        if header is None:
            raise InputFileError(f"{path}, line 1: the file is empty (no header row)")
        if header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        if any(REPLACEMENT in cell for cell in header):
            raise InputFileError(
                f"{path}, line 1: cannot decode as {enc} (the header row); "
                "give the file's encoding with --encoding (utf-8, gb18030, ...)"
            )
        check = RowChecker(district, header_map(header, path))
        rejects = _Rejects(rejects_path(path), header)
        chunk: dict[str, _Pending] = {}
        try:
            for line, row, why in rows:
                if why is None and not any(cell.strip() for cell in row):
                    continue
                summary.rows += 1
                try:
                    if why is not None:
                        raise RowError(why)
                    rec = check(row)
                except RowError as exc:
                    summary.rejected += 1
                    rejects.write(line, str(exc), row)
                    continue
                phone = rec["phone"]
                first = chunk.get(phone)
                if first is not None:
                    if first.rec["town_id"] != rec["town_id"]:
                        summary.rejected += 1
                        rejects.write(line, _conflict(first.rec["town_id"], first.line), row)
                        continue
                    # The same person again in this file: the later row wins, as an update.
                    del chunk[phone]
                    summary.updated += 1
                summary.by_town[rec["town_id"]] += 1
                summary.by_carrier[rec["carrier"]] += 1
                chunk[phone] = _Pending(rec, line, row)
                if len(chunk) >= chunk_rows:
                    _flush(engine, chunk, summary, rejects, check.now)
            _flush(engine, chunk, summary, rejects, check.now)
        finally:
            rejects.close()
        if rejects.used:
            summary.rejects_file = str(rejects.path)
        else:
            rejects.path.unlink(missing_ok=True)  # a stale file from an earlier run would mislead
    summary.seconds = time.perf_counter() - began
    return summary


def _conflict(town_id: str, line: int | None) -> str:
    where = f"line {line}" if line is not None else "an earlier line"
    return f"conflict: the phone is listed on {where} with town {town_id!r}; the first is kept"


def _flush(
    engine: Engine,
    chunk: dict[str, _Pending],
    summary: ImportSummary,
    rejects: _Rejects,
    stamp: dt.datetime,
) -> None:
    """Upsert the chunk, after setting aside rows an earlier chunk placed in another town."""
    if not chunk:
        return
    earlier = towns_written_at(engine, list(chunk), stamp)
    for phone, town_id in earlier.items():
        pending = chunk[phone]
        if pending.rec["town_id"] == town_id:
            continue  # the later row wins; the upsert counts it as an update
        del chunk[phone]
        summary.rejected += 1
        summary.by_town[pending.rec["town_id"]] -= 1
        summary.by_carrier[pending.rec["carrier"]] -= 1
        rejects.write(pending.line, _conflict(town_id, None), pending.row)
    rows = [p.rec for p in chunk.values()]
    inserted, updated = upsert_recipients(engine, rows, chunk_rows=len(rows) or 1)
    summary.imported += inserted
    summary.updated += updated
    chunk.clear()


def import_recipients(engine: Engine, district: District, path: Path) -> int:
    """Import for the simulator and scripts: how many recipients the database now holds."""
    import_recipients_file(engine, district, path)
    return int(stats(engine)["total"])
