"""The report as the office files it: attachment 7 per unit in xlsx and PDF, summary sheets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from scheduler import activities
from scheduler.cell_safety import neutralise_cell
from scheduler.core import Core
from scheduler.reports import (
    ATTACHMENT_LINE,
    FIELD_LABELS,
    FORM_HEADER,
    FORM_ROWS,
    FORM_WIDTHS,
    TITLE,
    build_monthly_report,
    write_report,
)
from tests.integration.test_reports import _history


def _fill(core: Core) -> None:
    _history(core)
    activities.add(
        core.engine,
        core.district,
        "黄湖镇",
        "2022-10",
        {
            "households_visited": "15",
            "banners": 2,
            "other": '=HYPERLINK("x")',
            "description": "10月10日在青波村开展平安宣讲。\n发放手册200份。",
        },
        now=core.clock(),
    )


def test_each_unit_has_an_attachment_7_form_bordered_on_one_a4_page(
    core: Core, tmp_path: Path
) -> None:
    _fill(core)
    out = write_report(build_monthly_report(core, "2022-10"), tmp_path / "月报.xlsx")
    wb = load_workbook(out)
    towns = [t.name for t in core.district.towns]
    office = f"{core.district.district.name}平安办"
    assert wb.sheetnames[: 1 + len(towns)] == [office, *towns]
    assert wb.sheetnames[1 + len(towns) :] == [
        "汇总",
        "配额完成情况",
        "分运营商发送",
        "发案倒查",
        "每周发送",
    ]
    ws = wb["黄湖镇"]
    assert ws["A1"].value == TITLE
    assert ws["A1"].alignment.horizontal == "center"
    assert "A1:D1" in {str(r) for r in ws.merged_cells.ranges}
    assert ws["A2"].value == "填报单位（乡镇街道、部门单位）：黄湖镇"
    assert ws["D2"].value == "月份：2022年10月"
    # The eight count fields in attachment 7's two rows, each label above its value.
    for first_row, fields in zip((3, 5), FORM_ROWS, strict=True):
        assert [ws.cell(first_row, c).value for c in range(1, 5)] == [
            FIELD_LABELS[k] for k in fields
        ]
    assert ws["A4"].value == 15 and ws["C4"].value == 2
    report = build_monthly_report(core, "2022-10")
    huanghu = next(f for f in report.forms if f.unit == "黄湖镇")
    assert ws["B6"].value == huanghu.counts["sms"] == huanghu.sms_own > 0
    assert ws["A7"].value == "其　他"
    assert ws["B7"].value == '\'=HYPERLINK("x")'  # text that would run as a formula
    assert ws["A8"].value == "活动开展情况（内容）"
    assert ws["B8"].value.startswith("10月10日在青波村")
    assert ws["A9"].value == "附件" and ws["B9"].value == ATTACHMENT_LINE
    assert ws["A10"].value.startswith("备注：此表请于2022年10月25日前报")
    _assert_boxed(ws, 2, 10, 4)
    assert [ws.column_dimensions[c].width for c in "ABCD"] == list(FORM_WIDTHS)
    assert ws.page_setup.orientation == "portrait"
    assert str(ws.page_setup.paperSize) == ws.PAPERSIZE_A4 == "9"
    assert ws.sheet_properties.pageSetUpPr.fitToPage
    assert (ws.page_setup.fitToWidth, ws.page_setup.fitToHeight) == (1, 1)

    summary = wb["汇总"]
    assert [c.value for c in summary[2]] == FORM_HEADER
    assert summary.cell(3 + len(towns), 1).value == "合计"
    carriers = [c.value for c in wb["分运营商发送"]["A"][2:5]]
    assert set(carriers) <= {"移动", "电信", "联通", "广电"} and carriers
    assert len(wb["每周发送"]._charts) == 1
    chart = wb["每周发送"]._charts[0]
    assert len(chart._charts) == 2  # the bars and the target line


def _assert_boxed(ws: Any, first_row: int, last_row: int, last_col: int) -> None:
    """Every cell, or the outline of every merged block, has a thin line on each side."""
    block = {}
    for rng in ws.merged_cells.ranges:
        for r in range(rng.min_row, rng.max_row + 1):
            for c in range(rng.min_col, rng.max_col + 1):
                block[(r, c)] = rng
    for row in range(first_row, last_row + 1):
        for col in range(1, last_col + 1):
            border = ws.cell(row, col).border
            rng = block.get((row, col))
            sides = {
                "left": rng is None or col == rng.min_col,
                "right": rng is None or col == rng.max_col,
                "top": rng is None or row == rng.min_row,
                "bottom": rng is None or row == rng.max_row,
            }
            for side, outer in sides.items():
                if outer:
                    assert getattr(border, side).style == "thin", (row, col, side)


def test_town_form_names_the_town_and_lists_no_other(core: Core, tmp_path: Path) -> None:
    _fill(core)
    report = build_monthly_report(core, "2022-10", "黄湖镇")
    assert report.unit == "黄湖镇"
    assert [f.unit for f in report.forms] == ["黄湖镇"]
    assert all(r.subject.town_id == "huanghu" for st in report.quotas for r in st.rows)
    wb = load_workbook(write_report(report, tmp_path / "town.xlsx"))
    assert wb.sheetnames[0] == "黄湖镇"
    assert "分运营商发送" not in wb.sheetnames
    other_towns = {t.name for t in core.district.towns} - {"黄湖镇"}
    for ws in wb.worksheets:
        for row in ws.iter_rows(values_only=True):
            assert not other_towns & {str(v) for v in row}, ws.title


def test_ties_share_a_rank_and_the_next_rank_skips(core: Core) -> None:
    _history(core)
    report = build_monthly_report(core, "2022-10")
    for st in report.quotas:
        ranks = [r.rank for r in st.rows]
        for r in st.rows:
            tied = [x for x in st.rows if x.attainment == r.attainment]
            assert r.rank == 1 + sum(1 for x in st.rows if x.attainment > r.attainment)
            assert len(tied) == ranks.count(r.rank)
        assert ranks == sorted(ranks)


def _pdf_text(pdf: Path, *pages: int) -> str:
    args = ["pdftotext", "-layout"]
    if pages:
        args += ["-f", str(pages[0]), "-l", str(pages[-1])]
    return subprocess.run([*args, str(pdf), "-"], check=True, capture_output=True, text=True).stdout


def _page_count(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True)
    match = re.search(r"^Pages:\s+(\d+)", info.stdout, re.M)
    assert match
    return int(match.group(1))


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
def test_town_report_as_pdf_reads_back_as_the_form(core: Core, tmp_path: Path) -> None:
    _fill(core)
    pdf = write_report(build_monthly_report(core, "2022-10", "黄湖镇"), tmp_path / "r.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    # The form, summary, ranking, check-back and weekly sections: one page each.
    assert _page_count(pdf) == 5
    first = _pdf_text(pdf, 1)
    for text in (
        TITLE,
        "填报单位（乡镇街道、部门单位）：黄湖镇",
        "月份：2022年10月",
        "走访村(社)住户(户)",
        "发送平安宣传短信(条)",
        "开展平安志愿活动(次)",
        "10月10日在青波村开展平安宣讲",
        "备注：此表请于2022年10月25日前报",
    ):
        assert text in first.replace(" ", ""), text.replace(" ", "")
    everything = _pdf_text(pdf)
    assert "配额完成情况与排名" in everything
    assert "发案倒查" in everything and "C1" in everything


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
def test_district_pdf_has_a_form_per_unit_then_the_tables(core: Core, tmp_path: Path) -> None:
    _fill(core)
    pdf = write_report(build_monthly_report(core, "2022-10"), tmp_path / "r.pdf")
    units = 1 + len(core.district.towns)
    assert _page_count(pdf) >= units + 5
    for page, name in enumerate(
        [f"{core.district.district.name}平安办", *[t.name for t in core.district.towns]], start=1
    ):
        text = _pdf_text(pdf, page).replace(" ", "")
        assert f"填报单位（乡镇街道、部门单位）：{name}" in text
        assert "备注：此表请于" in text  # the whole form on its one page
    assert "移动" in _pdf_text(pdf)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+86", "'+86"),
        ("-3", "'-3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("黄湖镇", "黄湖镇"),
        (-3, -3),
        (None, None),
    ],
)
def test_neutralise_cell(value: object, expected: object) -> None:
    assert neutralise_cell(value) == expected


def test_csv_cells_cannot_run_as_formulas(core: Core, tmp_path: Path) -> None:
    _fill(core)
    out = write_report(build_monthly_report(core, "2022-10"), tmp_path / "r.csv")
    text = out.read_text(encoding="utf-8-sig")
    assert "'=HYPERLINK" in text
    assert ",=HYPERLINK" not in text and ',"=HYPERLINK' not in text


def _pingan(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(PINGAN_DATABASE_URL=db_url, PINGAN_LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
def test_cli_writes_a_town_pdf_and_a_letter_pdf(tmp_path: Path, db_url: str) -> None:
    out = tmp_path / "黄湖镇.pdf"
    _pingan(
        tmp_path,
        db_url,
        "report",
        "monthly",
        "--month",
        "2022-11",
        "--town",
        "黄湖镇",
        "--out",
        str(out),
    )
    text = _pdf_text(out, 1).replace(" ", "")
    assert "填报单位（乡镇街道、部门单位）：黄湖镇" in text and "月份：2022年11月" in text
    _pingan(
        tmp_path, db_url, "letters", "render", "--town", "huanghu", "--out", str(tmp_path), "--pdf"
    )
    letter = tmp_path / "letter-to-residents-huanghu.pdf"
    assert _page_count(letter) >= 1
    assert "黄湖镇" in _pdf_text(letter).replace(" ", "")
