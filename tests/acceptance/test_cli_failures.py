"""A campaign with a typo'd template, end to end in subprocesses: `pingan run --once` still
sends the others and exits 1 naming it; after the fix `pingan occurrences retry` sends it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TYPO_CAMPAIGN = """
  - name: monday-notice
    description: 周一提醒（模板名写错）
    channel: sms
    template: survey-notise
    schedule: {cron: "0 9 * * mon"}
    active: {start: 2022-10-01, end: 2022-12-31}
"""


def pingan(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATA_DIR=str(tmp_path / "var"),
        PINGAN_CONFIG_DIR=str(tmp_path / "config"),
        PINGAN_LOG_FORMAT="json",
    )
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_run_once_sends_the_others_names_the_failed_and_retry_sends_it(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    campaigns = tmp_path / "config" / "campaigns.yaml"
    good = campaigns.read_text(encoding="utf-8")
    campaigns.write_text(good + TYPO_CAMPAIGN, encoding="utf-8")
    csv = tmp_path / "list.csv"
    assert (
        pingan(tmp_path, "recipients", "generate", "--count", "200", "--out", str(csv)).returncode
        == 0
    )
    assert pingan(tmp_path, "recipients", "import", str(csv)).returncode == 0

    run = pingan(tmp_path, "run", "--once", "--clock", "2022-10-10T09:30")
    assert run.returncode == 1, run.stderr
    occurrences = json.loads(pingan(tmp_path, "occurrences", "--format", "json").stdout)
    by_campaign = {o["campaign"]: o for o in occurrences}
    bad = by_campaign["monday-notice"]
    assert bad["state"] == "failed" and "survey-notise" in bad["error"]
    assert by_campaign["weekly-antifraud"]["state"] == "done"
    assert by_campaign["weekly-antifraud"]["queued"] == 200
    assert f"failed: occurrence {bad['id']} (monday-notice): " in run.stderr
    assert '"event": "occurrence.failed"' in run.stderr
    assert "Traceback" not in run.stderr
    stats = json.loads(pingan(tmp_path, "delivery", "stats", "--format", "json").stdout)
    assert stats["rows"][0]["queued"] == 0 and stats["rows"][0]["sending"] == 0

    # Retrying before the fix fails again, says why, exit 1.
    early = pingan(tmp_path, "occurrences", "retry", str(bad["id"]), "--format", "json")
    assert early.returncode == 1
    assert json.loads(early.stdout)["state"] == "failed"

    campaigns.write_text(good + TYPO_CAMPAIGN.replace("survey-notise", "survey-notice"))
    retried = pingan(tmp_path, "occurrences", "retry", str(bad["id"]), "--format", "json")
    assert retried.returncode == 0, retried.stderr
    data = json.loads(retried.stdout)
    assert (data["occurrence_id"], data["state"], data["queued"]) == (bad["id"], "ready", 200)
    refused = pingan(tmp_path, "occurrences", "retry", str(bad["id"]))
    assert refused.returncode == 1
    assert "not failed" in refused.stderr and "Traceback" not in refused.stderr

    again = pingan(tmp_path, "run", "--once", "--clock", "2022-10-10T10:00")
    assert again.returncode == 0, again.stderr
    stats = json.loads(pingan(tmp_path, "delivery", "stats", "--format", "json").stdout)
    row = stats["rows"][0]
    assert row["delivered"] + row["undelivered"] + row["failed"] == 400
    # Exactly once: each resident has one message from each of the two occurrences.
    sent = [
        json.loads(line)
        for line in (tmp_path / "var" / "dryrun-sent.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert len(sent) == len({line["message_id"] for line in sent}) == 400
    occ = json.loads(pingan(tmp_path, "occurrences", "--format", "json").stdout)
    assert {o["campaign"]: o["state"] for o in occ} == {
        "weekly-antifraud": "done",
        "monday-notice": "done",
    }


def test_retry_of_no_such_occurrence_is_refused(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    done = pingan(tmp_path, "occurrences", "retry", "42")
    assert done.returncode == 1
    assert "no occurrence 42" in done.stderr and "Traceback" not in done.stderr
