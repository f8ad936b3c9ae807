"""Reading the CSV files operators export from Excel: UTF-8 (with or without BOM) or GB18030/GBK.

The encoding is decided once per file; a line that does not decode in it is reported by line
number and rejected by the caller, never decoded as something else. A UTF-8 file into which
someone pasted a few GBK lines keeps UTF-8 for its good lines (decoding it all as GB18030 would
turn 王五 into 鐜嬩簲 on every line).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from scheduler.exceptions import InputFileError

READ_BYTES = 1 << 20
# What an undecodable byte becomes (the codecs' "replace" handler); a row holding it is rejected.
REPLACEMENT = "\ufffd"


def first_undecodable(fh: BinaryIO, encoding: str) -> tuple[int, str] | None:
    """(line, reason) of the first bytes `encoding` cannot decode, or None; rewinds `fh`.

    One streamed pass at codec speed.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    lines = 1
    try:
        while chunk := fh.read(READ_BYTES):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                # exc.object is the decoder's pending tail (never a newline) plus this chunk.
                return lines + bytes(exc.object[: exc.start]).count(b"\n"), exc.reason
            lines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            return lines, exc.reason
        return None
    finally:
        fh.seek(0)


def choose_encoding(fh: BinaryIO) -> str:
    """utf-8-sig, utf-8 or gb18030 (a superset of GBK, what Chinese Excel writes); rewinds `fh`.

    A BOM means utf-8-sig. A file that decodes whole as UTF-8 is UTF-8. Otherwise the lines
    with non-ASCII bytes vote: valid UTF-8 is almost never what GBK text happens to look like,
    so when most of them are valid UTF-8 the file is UTF-8 with a few bad lines, else GB18030.
    """
    head = fh.read(len(codecs.BOM_UTF8))
    fh.seek(0)
    if head == codecs.BOM_UTF8:
        return "utf-8-sig"
    if first_undecodable(fh, "utf-8") is None:
        return "utf-8"
    utf8 = other = 0
    tail = b""
    try:
        while True:
            chunk = fh.read(READ_BYTES)
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop() if chunk else b""
            for line in lines:
                if line.isascii():
                    continue
                try:
                    line.decode("utf-8")
                    utf8 += 1
                except UnicodeDecodeError:
                    other += 1
            if not chunk:
                break
    finally:
        fh.seek(0)
    return "utf-8" if utf8 > other else "gb18030"


@dataclass
class DecodedText:
    """A small file's text; undecodable bytes replaced, their lines listed with the reason."""

    encoding: str
    text: str
    bad_lines: dict[int, str] = field(default_factory=dict)


def decode_file(path: Path) -> DecodedText:
    """The whole file decoded line by line in its one encoding (see choose_encoding)."""
    try:
        with path.open("rb") as fh:
            encoding = choose_encoding(fh)
            raw = fh.read()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror}") from None
    if encoding == "utf-8-sig":
        raw = raw[len(codecs.BOM_UTF8) :]
    codec = "utf-8" if encoding == "utf-8-sig" else encoding
    parts: list[str] = []
    bad: dict[int, str] = {}
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            parts.append(line.decode(codec))
        except UnicodeDecodeError as exc:
            bad[number] = f"cannot decode as {codec} ({exc.reason})"
            parts.append(line.decode(codec, errors="replace"))
    return DecodedText(encoding, "\n".join(parts), bad)


def read_text(path: Path) -> str:
    """The file's text; raises InputFileError naming every line that does not decode."""
    decoded = decode_file(path)
    if decoded.bad_lines:
        where = "; ".join(f"line {n}: {why}" for n, why in sorted(decoded.bad_lines.items())[:5])
        more = len(decoded.bad_lines) - 5
        raise InputFileError(f"{path}, {where}" + (f" (and {more} more lines)" if more > 0 else ""))
    return decoded.text
