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
import operator
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
from scheduler.store.recipients import stats, stored_time, towns_written_at, upsert_import_chunk
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
    """Turns one CSV row into a recipient row, or raises RowError with the reason.

    The row comes back as a tuple in `store.recipients.IMPORT_COLUMNS` order with both
    timestamps already in storage form (`stored_now`): the import's hot loop runs a million
    times, and a dict per row re-read column by column was a third of its time.
    """

    def __init__(
        self,
        district: District,
        mapping: dict[str, int],
        stored: Callable[[dt.datetime], Any] | None = None,
    ) -> None:
        self.district = district
        self.now = dt.datetime.now(dt.UTC)
        # The timestamp as the database stores it (`store.recipients.stored_time`).
        self.stored_now = self.now if stored is None else stored(self.now)
        index = tuple(mapping.get(k, -1) for k in COLUMNS)
        self.width = max(mapping.values()) + 1
        # Missing columns read an empty cell appended after the row's last one.
        self._every_column = -1 not in index
        self._cells = operator.itemgetter(*(i if i >= 0 else self.width for i in index))
        self._villages: dict[tuple[str, str], tuple[Town, Village]] = {}
        # Carrier (or None: not allocated) per 5-digit prefix, the longest the table uses.
        self._carriers: dict[str, str | None] = {}
        self._known: dict[tuple[str, ...], tuple[str, str, str | None, str | None, str]] = {}

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

    def _phone(self, raw: str) -> tuple[str, str]:
        """The normal form and its carrier; an 11-digit number as stored (most rows) skips
        `normalize`'s Unicode and prefix handling, with the same result."""
        if len(raw) == 11 and raw[0] == "1" and raw.isascii() and raw.isdigit():
            prefix = raw[:5]
            try:
                carrier = self._carriers[prefix]
            except KeyError:
                try:
                    carrier = self._carriers[prefix] = carrier_of(raw)
                except InvalidPhoneNumber:
                    carrier = self._carriers[prefix] = None
            if carrier is not None:
                return raw, carrier
        try:
            phone = normalize(raw)
        except InvalidPhoneNumber as exc:
            raise RowError(str(exc)) from None
        return phone, carrier_of(phone)

    def _segments(self, raw: str) -> str:
        segs = [s.strip() for s in raw.replace("；", ";").split(";") if s.strip()]
        unknown = [s for s in segs if s not in SEGMENTS]
        if unknown:
            raise RowError(
                f"unknown segment(s) {', '.join(unknown)}; known: {', '.join(sorted(SEGMENTS))}"
            )
        return f";{';'.join(dict.fromkeys(segs))};" if segs else ""

    def _residence(self, raw: str) -> str:
        residence = RESIDENCE_NAMES.get(raw.lower())
        if residence is None:
            raise RowError(f"unknown residence {raw!r} (registered/户籍 or migrant/流动)")
        return residence

    def _carrier(self, raw: str) -> str:
        carrier = CARRIER_NAMES.get(raw) or CARRIER_NAMES.get(raw.lower())
        if carrier is None:
            raise RowError(
                f"unknown carrier {raw!r} (mobile, unicom, telecom, broadnet "
                "or 移动, 联通, 电信, 广电)"
            )
        return carrier

    def _tail(
        self, town_raw: str, village_raw: str, carrier_raw: str, residence_raw: str, segs_raw: str
    ) -> tuple[str, str, str | None, str | None, str]:
        """(town id, village id, carrier named in the file or None, residence, segments),
        or RowError: the cells a list repeats from row to row."""
        town, village = self._place(town_raw, village_raw)
        return (
            town.id,
            village.id,
            self._carrier(carrier_raw) if carrier_raw else None,
            self._residence(residence_raw) if residence_raw else None,
            self._segments(segs_raw) if segs_raw else "",
        )

    def __call__(self, row: list[str]) -> tuple[Any, ...]:
        if self._every_column and len(row) >= self.width:
            cells = self._cells(row)
        else:
            cells = self._cells(row + [""] * (self.width - len(row) + 1))
        phone_raw, town_raw, village_raw, name, household, carrier_raw, residence_raw, segs_raw = (
            map(str.strip, cells)
        )
        phone, carrier = self._phone(phone_raw)
        # A list holds a few thousand distinct (place, carrier, residence, segments) cells:
        # each combination is checked once, then looked up (a bad one is not remembered, so
        # it fails every time).
        key = (town_raw, village_raw, carrier_raw, residence_raw, segs_raw)
        tail = self._known.get(key)
        if tail is None:
            tail = self._tail(*key)
            if len(self._known) < 20_000:  # a file of all-distinct cells must not grow memory
                self._known[key] = tail
        if len(name) > MAX_TEXT or len(household) > MAX_TEXT or "\x00" in name + household:
            for label, value in (("name", name), ("household", household)):
                if len(value) > MAX_TEXT:
                    raise RowError(f"{label} longer than {MAX_TEXT} characters")
                if "\x00" in value:
                    raise RowError(f"{label} holds a NUL character")
        stamp = self.stored_now
        return (
            phone,
            name or None,
            tail[0],
            tail[1],
            household or None,
            tail[2] or carrier,
            tail[3],
            tail[4],
            stamp,
            stamp,
        )


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
        # The last line holding U+FFFD, bytes that did not decode (a C-level `in` per line;
        # only a record that includes that line has its cells searched).
        self.undecodable = 0
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
        elif REPLACEMENT in line:
            self.undecodable = self.number
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
        if lines.oversized and any(n in lines.oversized for n in range(previous + 1, line + 1)):
            reason = f"line longer than {lines.limit} characters"
            row = []
        elif lines.undecodable > previous and any(REPLACEMENT in cell for cell in row):
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


# An accepted row waiting for its chunk's upsert, with what its reject would need:
# (checked row, line number, the file's cells). A plain tuple: one is made per row.
_Pending = tuple[tuple[Any, ...], int, list[str]]
# Positions in a checked row (store.recipients.IMPORT_COLUMNS).
_TOWN, _CARRIER = 2, 5


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
        check = RowChecker(district, header_map(header, path), stored_time(engine))
        rejects = _Rejects(rejects_path(path), header)
        chunk: dict[str, _Pending] = {}
        by_town, by_carrier = summary.by_town, summary.by_carrier
        n_rows = 0
        try:
            for line, row, why in rows:
                if why is None and not (row and row[0].strip()) and not any(map(str.strip, row)):
                    continue
                n_rows += 1
                try:
                    if why is not None:
                        raise RowError(why)
                    rec = check(row)
                except RowError as exc:
                    summary.rejected += 1
                    rejects.write(line, str(exc), row)
                    continue
                phone = rec[0]
                first = chunk.get(phone)
                if first is not None:
                    if first[0][_TOWN] != rec[_TOWN]:
                        summary.rejected += 1
                        rejects.write(line, _conflict(first[0][_TOWN], first[1]), row)
                        continue
                    # The same person again in this file: the later row wins, as an update.
                    del chunk[phone]
                    summary.updated += 1
                by_town[rec[_TOWN]] += 1
                by_carrier[rec[_CARRIER]] += 1
                chunk[phone] = (rec, line, row)
                if len(chunk) >= chunk_rows:
                    _flush(engine, chunk, summary, rejects, check.now)
            _flush(engine, chunk, summary, rejects, check.now)
        finally:
            summary.rows = n_rows
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
    """Upsert the chunk; rows an earlier chunk placed in another town are kept out by the
    upsert itself, then found (only when some were) and rejected as conflicts."""
    if not chunk:
        return
    inserted, updated = upsert_import_chunk(engine, [p[0] for p in chunk.values()])
    summary.imported += inserted
    summary.updated += updated
    if inserted + updated < len(chunk):
        earlier = towns_written_at(engine, list(chunk), stamp)
        for phone, town_id in earlier.items():
            rec, line, row = chunk[phone]
            if rec[_TOWN] == town_id:
                continue  # written by this chunk (the later row won)
            summary.rejected += 1
            summary.by_town[rec[_TOWN]] -= 1
            summary.by_carrier[rec[_CARRIER]] -= 1
            rejects.write(line, _conflict(town_id, None), row)
    chunk.clear()


def import_recipients(engine: Engine, district: District, path: Path) -> int:
    """Import for the simulator and scripts: how many recipients the database now holds."""
    import_recipients_file(engine, district, path)
    return int(stats(engine)["total"])
