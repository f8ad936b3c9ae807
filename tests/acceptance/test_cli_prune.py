"""`pingan db prune` as an operator runs it: quota figures unchanged, archives written 0600,
clear errors, JSON for scripts."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path

from tests.acceptance.test_cli_acceptance import as_json, pingan


def test_prune_archives_october_and_keeps_its_quota_figures(tmp_path: Path, db_url: str) -> None:
    env = {"PINGAN_DATABASE_URL": db_url}
    csv = tmp_path / "list.csv"
    pingan(tmp_path, "recipients", "generate", "--count", "200", "--out", str(csv), **env)
    pingan(tmp_path, "recipients", "import", str(csv), **env)
    pingan(tmp_path, "run", "--once", "--clock", "2022-10-10T09:30", **env)
    status = ["quota", "status", "--month", "2022-10", "--format", "json"]
    before = as_json(pingan(tmp_path, *status, **env))

    dry = as_json(
        pingan(
            tmp_path, "db", "prune", "--before", "2022-11", "--dry-run", "--format", "json", **env
        )
    )
    assert [(m["month"], m["messages"], m["action"]) for m in dry["months"]] == [
        ("2022-10", 200, "would prune")
    ]
    done = as_json(
        pingan(tmp_path, "db", "prune", "--before", "2022-11", "--format", "json", **env)
    )
    (month,) = done["months"]
    assert (month["month"], month["messages"], month["action"]) == ("2022-10", 200, "pruned")
    assert month["attempts"] >= 200
    assert as_json(pingan(tmp_path, *status, **env)) == before
    archive = Path(done["archive_dir"]) / "messages-2022-10.csv.gz"
    lines = gzip.decompress(archive.read_bytes()).decode().splitlines()
    assert lines[0].startswith("id,occurrence_id,recipient_id,phone,")
    assert len(lines) == 201
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600

    again = pingan(tmp_path, "db", "prune", "--before", "2022-11", **env)
    assert "2022-10" in again.stdout and "skipped" in again.stdout


def test_prune_explains_a_bad_month(tmp_path: Path) -> None:
    bad = pingan(tmp_path, "db", "prune", "--before", "2022-13", ok=False)
    assert bad.returncode == 1
    assert "--before" in bad.stderr and "YYYY-MM" in bad.stderr
    future = pingan(tmp_path, "db", "prune", "--before", "2999-01", ok=False)
    assert future.returncode == 1
    assert "current month" in future.stderr
    missing = pingan(tmp_path, "db", "prune", ok=False)
    assert missing.returncode == 2
    assert "--before" in missing.stderr
