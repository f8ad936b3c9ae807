"""The `pingan` command end to end, in subprocesses, as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pingan(
    tmp_path: Path, *args: str, ok: bool = True, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(PINGAN_DATA_DIR=str(tmp_path / "var"), PINGAN_LOG_FORMAT="json", **extra_env)
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


def test_fresh_install_runs_the_weekly_sms_through_the_dry_run_provider(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    pingan(tmp_path, "recipients", "generate", "--count", "300", "--out", str(csv))
    imported = as_json(pingan(tmp_path, "recipients", "import", str(csv), "--format", "json"))
    assert imported["imported"] == 300
    run = pingan(tmp_path, "run", "--once", "--clock", "2022-10-10T09:30")
    assert '"event": "occurrence.catch_up"' in run.stderr
    assert "138" not in "".join(
        line for line in run.stderr.splitlines() if '"phone"' in line
    )  # numbers are masked in logs
    stats = as_json(pingan(tmp_path, "delivery", "stats", "--format", "json"))
    (row,) = stats["rows"]
    assert row["delivered"] + row["undelivered"] + row["failed"] == 300
    assert row["queued"] == row["sending"] == row["unknown"] == 0
    occurrences = as_json(pingan(tmp_path, "occurrences", "--format", "json"))
    assert [(o["campaign"], o["state"], o["queued"]) for o in occurrences] == [
        ("weekly-antifraud", "done", 300)
    ]
    # Running the same morning again sends nothing twice.
    pingan(tmp_path, "run", "--once", "--clock", "2022-10-10T10:00")
    again = as_json(pingan(tmp_path, "delivery", "stats", "--format", "json"))
    assert again["rows"][0]["delivered"] == row["delivered"]
    listed = as_json(pingan(tmp_path, "campaigns", "list", "--format", "json"))
    weekly = next(c for c in listed if c["name"] == "weekly-antifraud")
    assert weekly["last"]["queued"] == 300


@pytest.mark.parametrize("name", ["survey-notice", "participation-ways", "participation-meaning"])
def test_preview_shows_the_phone_text(tmp_path: Path, name: str) -> None:
    data = as_json(
        pingan(tmp_path, "templates", "preview", name, "--town", "huanghu", "--format", "json")
    )
    assert data["text"].startswith("【平安上虞】")
    assert data["text"].endswith("回T退订")
    assert "上虞" in data["text"][6:]
    assert data["segments"] == (1 if data["chars"] <= 70 else 2)
    assert data["approval"] == "approved"


def test_lint_exits_1_naming_file_line_and_reason(tmp_path: Path) -> None:
    folder = tmp_path / "messages"
    import shutil

    shutil.copytree(ROOT / "templates" / "messages", folder)
    (folder / "bad.sms.j2").write_text("---\nchannel: sms\n---\n{{ town }\n", encoding="utf-8")
    env_dir = str(folder)
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", "templates", "lint"],
        cwd=ROOT,
        env={**os.environ, "PINGAN_TEMPLATES_DIR": env_dir, "PINGAN_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"{folder / 'bad.sms.j2'}:4: bad: syntax error" in done.stdout.replace("\n", " ")


def test_quota_targets_reproduce_the_seed_table(tmp_path: Path) -> None:
    data = as_json(
        pingan(tmp_path, "quota", "targets", "--rule", "village-outreach", "--format", "json")
    )
    text = json.dumps(data, ensure_ascii=False)
    for figure in ("2836", "227", "709", "993", "1276", "20209", "1617", "5052", "7073", "9094"):
        assert figure in text


@pytest.mark.slow
def test_simulate_says_which_quota_a_thin_list_misses_and_by_how_much(tmp_path: Path) -> None:
    csv = tmp_path / "thin.csv"
    pingan(tmp_path, "recipients", "generate", "--count", "400", "--out", str(csv))
    temp = tmp_path / "temp"
    temp.mkdir()
    done = pingan(
        tmp_path,
        "simulate",
        "--from",
        "2022-10-01",
        "--to",
        "2022-10-16",
        "--recipients",
        str(csv),
        "--format",
        "json",
        ok=False,
        TMPDIR=str(temp),
    )
    assert done.returncode == 1, done.stderr
    assert list(temp.iterdir()) == []  # its scratch database went with it
    data = json.loads(done.stdout)
    assert data["all_met"] is False
    weekly = next(r for r in data["rules"] if r["rule"] == "town-weekly-oct")
    short = {u["subject"]: u for u in weekly["unmet"]}
    assert "huanghu" in short
    assert short["huanghu"]["shortfall"] == short["huanghu"]["target"] - short["huanghu"]["actual"]


def test_letter_renders_per_town_for_print(tmp_path: Path) -> None:
    out = tmp_path / "letters"
    pingan(tmp_path, "letters", "render", "--town", "黄湖镇", "--out", str(out))
    html = (out / "letter-to-residents-huanghu.html").read_text(encoding="utf-8")
    assert "黄湖镇" in html and "上虞区平安办" in html
    assert "@page" in html and "page-break-after" in html
