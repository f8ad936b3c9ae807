"""Imports that keep the good rows: bad lines, oversized lines and cells, and conflicting
duplicates are rejected one row at a time, with line and reason; the rest is imported."""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.cases import import_cases
from scheduler.core import Core
from scheduler.exceptions import InputFileError
from scheduler.models import FraudCase, Recipient
from scheduler.recipients import import_recipients_file
from scheduler.textfiles import decode_file, read_text

HEADER = "phone,town,village,name,household,carrier,residence,segments"


def _recipients(core: Core) -> dict[str, Recipient]:
    with Session(core.engine) as session:
        return {r.phone: r for r in session.scalars(select(Recipient))}


def _rejects(path: Path) -> dict[int, list[str]]:
    raw = path.read_bytes()
    assert raw.startswith(codecs.BOM_UTF8)
    rows = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    assert rows[0][:2] == ["line", "reason"]
    return {int(r[0]): r[1:] for r in rows[1:]}


def test_utf8_file_with_a_few_gbk_lines_keeps_utf8_and_rejects_those_lines(
    core: Core, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.csv"
    good = [f"1380000{i:04d},黄湖镇,清波,王五{i},,,," for i in range(20)]
    path.write_bytes(
        (HEADER + "\n" + "\n".join(good[:10]) + "\n").encode("utf-8")
        + "13900000001,黄湖镇,清波,李四,,,,\n".encode("gbk")
        + "\n".join(good[10:]).encode("utf-8")
        + "\n13900000002,黄湖镇,清波,赵六,,,,\n".encode("gbk")
    )
    summary = import_recipients_file(core.engine, core.district, path)
    assert summary.encoding == "utf-8"
    assert (summary.rows, summary.imported, summary.rejected) == (22, 20, 2)
    rows = _recipients(core)
    assert rows["13800000003"].name == "王五3"
    assert rows["13800000019"].name == "王五19"
    assert "13900000001" not in rows and "13900000002" not in rows
    rejects = _rejects(tmp_path / "mixed.rejects.csv")
    assert set(rejects) == {12, 23}
    assert all("cannot decode as utf-8" in r[0] for r in rejects.values())


def test_a_mostly_gbk_file_is_gbk(core: Core, tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    lines = [f"1380000{i:04d},黄湖镇,清波,王五{i},,,," for i in range(5)]
    path.write_bytes((HEADER + "\n" + "\n".join(lines) + "\n").encode("gbk"))
    summary = import_recipients_file(core.engine, core.district, path)
    assert summary.encoding == "gb18030"
    assert (summary.imported, summary.rejected) == (5, 0)
    assert _recipients(core)["13800000004"].name == "王五4"


def test_a_forced_encoding_rejects_the_lines_it_cannot_decode(core: Core, tmp_path: Path) -> None:
    lines = [HEADER] + [f"1380000{i:04d},huanghu,qingbo,,,,," for i in range(6000)]
    corrupt = tmp_path / "c.csv"
    corrupt.write_bytes(
        "\n".join(lines[:4000]).encode()
        + b"\n13900000000,huanghu,qingbo,\xff\xfe,,,,\n"
        + "\n".join(lines[4000:]).encode()
    )
    summary = import_recipients_file(core.engine, core.district, corrupt, encoding="utf-8")
    assert (summary.rows, summary.imported, summary.rejected) == (6001, 6000, 1)
    rejects = _rejects(tmp_path / "c.rejects.csv")
    assert list(rejects) == [4001]
    assert "cannot decode as utf-8" in rejects[4001][0]


def test_oversized_line_and_cell_reject_only_their_row(core: Core, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    tall = "y\n" * 70_000
    path.write_text(
        "\n".join(
            [
                HEADER,
                "13800000001,huanghu,qingbo,,,,,",
                f"13800000002,huanghu,qingbo,{'x' * 300_000},,,,",  # one line of 300,000
                "13800000003,huanghu,qingbo,,,,,",
                f'13800000004,huanghu,qingbo,"{tall}",,,,',  # a quoted cell over lines
                "13800000005,huanghu,qingbo,,,,,",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    summary = import_recipients_file(core.engine, core.district, path)
    assert summary.imported == 3
    assert set(_recipients(core)) == {"13800000001", "13800000003", "13800000005"}
    rejects = _rejects(tmp_path / "big.rejects.csv")
    assert set(rejects) == {3, 70_005}
    assert "line longer than 65536 characters" in rejects[3][0]
    assert "field larger than field limit" in rejects[70_005][0]
    assert (summary.rows, summary.rejected) == (5, 2)


def test_a_phone_in_two_towns_is_a_conflict_and_the_first_is_kept(
    core: Core, tmp_path: Path
) -> None:
    lines = [
        HEADER,
        "13800000001,huanghu,qingbo,甲,,,,",
        "13800000002,huanghu,qingbo,乙,,,,",
        "13800000001,caoe,jiangxi,甲,,,,",  # same chunk, other town
        "13800000003,huanghu,qingbo,丙,,,,",
        "13800000004,huanghu,qingbo,丁,,,,",
        "13800000002,caoe,jiangxi,乙,,,,",  # later chunk, other town
        "13800000003,huanghu,qingbo,丙二,,,,",  # later chunk, same town: an update
    ]
    path = tmp_path / "dup.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = import_recipients_file(core.engine, core.district, path, chunk_rows=3)
    assert (summary.rows, summary.imported, summary.updated, summary.rejected) == (7, 4, 1, 2)
    rows = _recipients(core)
    assert rows["13800000001"].town_id == "huanghu"
    assert rows["13800000002"].town_id == "huanghu"
    assert rows["13800000003"].name == "丙二"
    assert summary.to_dict()["by_town"] == {"huanghu": 5}
    rejects = _rejects(tmp_path / "dup.rejects.csv")
    assert set(rejects) == {4, 7}
    assert rejects[4][0].startswith("conflict") and "line 2" in rejects[4][0]
    assert rejects[7][0].startswith("conflict") and "huanghu" in rejects[7][0]


def test_rejects_file_cells_are_written_as_text(core: Core, tmp_path: Path) -> None:
    path = tmp_path / "inj.csv"
    path.write_text(
        HEADER + "\n=cmd|' /C calc'!A0,huanghu,qingbo,@SUM(A1),-1+2,,,\n", encoding="utf-8"
    )
    import_recipients_file(core.engine, core.district, path)
    rejects = _rejects(tmp_path / "inj.rejects.csv")
    assert rejects[2][1:5] == ["'=cmd|' /C calc'!A0", "huanghu", "qingbo", "'@SUM(A1)"]
    assert rejects[2][5] == "'-1+2"


def test_small_files_report_undecodable_lines(tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    path.write_bytes("a,b\n王五,1\n".encode() + "李四,2\n".encode("gbk") + "赵六,3\n".encode())
    decoded = decode_file(path)
    assert decoded.encoding == "utf-8"
    assert list(decoded.bad_lines) == [3]
    assert "王五" in decoded.text and "赵六" in decoded.text
    with pytest.raises(InputFileError, match=r"cases\.csv, line 3: cannot decode as utf-8"):
        read_text(path)


def test_case_import_rejects_only_the_line_in_another_encoding(core: Core, tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    head = "case_id,time,amount,fraud_type,place,town,village\n"
    path.write_bytes(
        (head + "C1,2022-10-09T10:00,5000,刷单返利,王家,huanghu,qingbo\n").encode()
        + "C2,2022-10-09T11:00,6000,刷单返利,李家,huanghu,qingbo\n".encode("gbk")
        + "C3,2022-10-09T12:00,7000,冒充客服,赵家,huanghu,qingbo\n".encode()
    )
    result = import_cases(core, path)
    assert (result.read, result.inserted) == (3, 2)
    assert result.rejected == [{"line": 3, "reason": "cannot decode as utf-8 (invalid start byte)"}]
    with Session(core.engine) as s:
        places = dict(s.execute(select(FraudCase.case_id, FraudCase.place)).all())
    assert places == {"C1": "王家", "C3": "赵家"}
