"""The OWASP CSV-injection rule, and the writers of this package that apply it."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.cell_safety import neutralise_cell

ROOT = Path(__file__).resolve().parents[2]
PINGAN = [sys.executable, "-m", "scheduler"]


@pytest.mark.parametrize(
    "text",
    ["=1+1", "+86 138", "-5", "@SUM(A1)", "\t=cmd", "\r=cmd", '=HYPERLINK("http://x","y")'],
)
def test_formula_like_text_gets_a_leading_quote(text: str) -> None:
    assert neutralise_cell(text) == "'" + text


@pytest.mark.parametrize("text", ["", "平安", "13800138000", "a=b", " =1", "'=1", "1-2"])
def test_other_text_is_unchanged(text: str) -> None:
    assert neutralise_cell(text) == text


@pytest.mark.parametrize("value", [None, -5, 3.5, True, dt.date(2026, 1, 1)])
def test_non_text_values_are_unchanged(value: object) -> None:
    assert neutralise_cell(value) is value


def test_quota_csv_export_writes_formula_like_names_as_text(tmp_path: Path) -> None:
    """A town named like a formula (from district.yaml) reaches `pingan quota targets` CSV."""
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    district = config / "district.yaml"
    district.write_text(
        district.read_text("utf-8").replace("name: 黄湖镇", "name: \"=HYPERLINK('x')\""), "utf-8"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(PINGAN_DATA_DIR=str(tmp_path / "var"), PINGAN_CONFIG_DIR=str(config))
    done = subprocess.run(
        [*PINGAN, "quota", "targets", "--rule", "town-weekly-oct", "--format", "csv"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    names = [row[2] for row in csv.reader(io.StringIO(done.stdout))]
    assert "'=HYPERLINK('x')" in names
    assert not any(n.startswith(("=", "+", "-", "@")) for n in names)
