"""`pingan quota` end to end, in a subprocess, on both backends."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from scheduler.db import transaction
from scheduler.models import Message, MessageBody, MessageState, Occurrence
from scheduler.store.counters import CounterIncrement, bump_counters, local_day
from scheduler.store.retention import period_of

ROOT = Path(__file__).resolve().parents[2]
TZ = ZoneInfo("Asia/Shanghai")


def pingan(
    tmp_path: Path, *args: str, db_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATA_DIR=str(tmp_path / "var"),
        PINGAN_CONFIG_DIR=str(ROOT / "config"),
        PINGAN_LOG_FORMAT="json",
        COLUMNS="200",
    )
    if db_url:
        env["PINGAN_DATABASE_URL"] = db_url
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


SEED_003 = [
    ["王位山", "2836", "227", "709", "993", "1276"],
    ["虎山", "2077", "166", "519", "727", "935"],
    ["清波", "2713", "217", "678", "950", "1221"],
    ["赐璧", "2560", "205", "640", "896", "1152"],
    ["青山", "2566", "205", "642", "898", "1155"],
    ["吴四坊", "753", "60", "188", "264", "339"],
    ["派出所", "6704", "536", "1676", "2346", "3017"],
    ["合计", "20209", "1617", "5052", "7073", "9094"],
]


def test_targets_reproduce_seed_003_in_every_format(tmp_path: Path) -> None:
    out = pingan(tmp_path, "quota", "targets", "--rule", "village-outreach", "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0][4:] == [
        "by 2022-03-31 (8%)",
        "by 2022-04-30 (25%)",
        "by 2022-05-31 (35%)",
        "by 2022-06-30 (45%)",
    ]
    assert [r[2:] for r in rows[1:]] == SEED_003

    out = pingan(tmp_path, "quota", "targets", "--rule", "village-outreach", "--format", "json")
    (table,) = json.loads(out.stdout)
    assert table["total"] == {
        "subject": None,
        "name": "合计",
        "base": 20209,
        "targets": [1617, 5052, 7073, 9094],
    }

    out = pingan(tmp_path, "quota", "targets", "--rule", "village-outreach")
    assert out.returncode == 0, out.stderr
    for name, *numbers in SEED_003:
        line = next(ln for ln in out.stdout.splitlines() if f" {name} " in ln)
        cells = [c.strip() for c in line.split("│")[1:-1]]
        assert cells[1:] == [name, *numbers]


def test_unknown_rule_is_an_error(tmp_path: Path) -> None:
    out = pingan(tmp_path, "quota", "targets", "--rule", "nope")
    assert out.returncode == 1
    assert "unknown quota rule 'nope'" in out.stderr
    assert "village-outreach" in out.stderr


def test_bad_quota_file_names_file_and_field(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "district.yaml").write_text(
        (ROOT / "config" / "district.yaml").read_text("utf-8"), "utf-8"
    )
    (cfg / "quotas.yaml").write_text(
        "rules:\n  - {id: x, subject: town, window: week, start: 2022-10-01, end: 2022-10-31,"
        " measure: messages_sent, base: population, share: 2}\n",
        "utf-8",
    )
    env_out = subprocess.run(
        [sys.executable, "-m", "scheduler", "quota", "targets"],
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")},
            "PINGAN_CONFIG_DIR": str(cfg),
            "PINGAN_DATA_DIR": str(tmp_path / "var"),
        },
        timeout=120,
        check=False,
    )
    assert env_out.returncode == 1
    assert "quotas.yaml" in env_out.stderr
    assert "rules[0].share" in env_out.stderr


def _send(engine: Engine, sends: list[tuple[dt.datetime, str, str, str]], batch: int) -> None:
    with transaction(engine) as s:
        body = MessageBody(
            digest=str(batch) * 64,
            text="【平安上虞】谨防电信诈骗",
            template_name="t",
            template_hash="h" * 64,
            chars=12,
            segments=1,
        )
        s.add(body)
        s.flush()
        for i, (at, town, village, carrier) in enumerate(sends):
            occ = Occurrence(campaign=f"weekly-{batch}", scheduled_at=at, created_at=at)
            s.add(occ)
            s.flush()
            s.add(
                Message(
                    occurrence_id=occ.id,
                    recipient_id=i + 1,
                    phone="13800000000",
                    town_id=town,
                    village_id=village,
                    carrier=carrier,
                    body_id=body.id,
                    segments=1,
                    state=MessageState.SENT,
                    queued_at=at,
                    sent_at=at,
                    period=period_of(at, TZ),
                )
            )
            bump_counters(s, [CounterIncrement(local_day(at, TZ), town, village, carrier, sent=1)])


def test_status_ranks_and_marks_laggards(tmp_path: Path, engine: Engine, db_url: str) -> None:
    # 曹娥街道 (4600 people, target 2300) meets W41; the others send nothing.
    at = dt.datetime(2022, 10, 12, 10, tzinfo=TZ)
    _send(
        engine,
        [(at + dt.timedelta(seconds=i), "caoe", "jiangxi", "mobile") for i in range(2300)],
        1,
    )
    _send(engine, [(at, "songxia", "qiansha", "unicom")], 2)

    out = pingan(
        tmp_path,
        "quota",
        "status",
        "--rule",
        "town-weekly-oct",
        "--week",
        "2022-W41",
        "--format",
        "json",
        db_url=db_url,
    )
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)
    assert result["window"]["label"] == "2022-W41"
    assert result["measure"] == "messages_sent"
    rows = result["rows"]
    assert [(r["subject"]["key"], r["actual"], r["status"], r["laggard"]) for r in rows[:2]] == [
        ("caoe", 2300, "met", False),
        ("songxia", 1, "behind", True),
    ]
    assert [r["rank"] for r in rows] == [1, 2, 3, 3, 3]

    # --on picks each rule's window containing the day: the weekly town and carrier rules and
    # the carrier monthly rule are active on 12 October.
    out = pingan(
        tmp_path, "quota", "status", "--on", "2022-10-12", "--format", "csv", db_url=db_url
    )
    rows2 = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {(r["rule"], r["window"]) for r in rows2} == {
        ("town-weekly-oct", "2022-W41"),
        ("carrier-weekly", "2022-W41"),
        ("carrier-monthly", "2022-10"),
    }
    mobile = next(r for r in rows2 if r["rule"] == "carrier-monthly" and r["subject"] == "mobile")
    # Carrier rules count the sends carriers report; the office's own are shown beside them.
    assert (mobile["own"], mobile["reported"], mobile["actual"], mobile["target"]) == (
        "2300",
        "0",
        "0",
        "14400",
    )

    # The table says what it counts, and marks laggards; --by village re-counts by village.
    out = pingan(
        tmp_path,
        "quota",
        "status",
        "--rule",
        "town-weekly-oct",
        "--week",
        "2022-W41",
        "--by",
        "village",
        db_url=db_url,
    )
    assert out.returncode == 0, out.stderr
    assert "counts messages sent" in out.stdout
    assert "caoe/jiangxi" in out.stdout
    assert "laggard" in out.stdout

    out = pingan(
        tmp_path, "quota", "status", "--week", "2022-W41", "--month", "2022-10", db_url=db_url
    )
    assert out.returncode != 0
