"""Reading the small CSV files operators export from Excel: UTF-8 (with or without BOM) or
GB18030/GBK, whichever decodes."""

from __future__ import annotations

from pathlib import Path

from scheduler.exceptions import InputFileError


def read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror}") from None
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise InputFileError(f"{path}: neither UTF-8 nor GB18030")
