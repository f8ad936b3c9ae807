"""What `pingan` loads before it works: the CLI imports each command's code inside the
command, so help and `campaigns run` start without the web, provider, PDF, spreadsheet or
password libraries (their imports were most of a short command's time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.acceptance.test_cli_acceptance import ROOT, pingan

HEAVY = ("argon2", "fastapi", "uvicorn", "weasyprint", "twilio", "openpyxl", "starlette")


def _imported(tmp_path: Path, *args: str) -> set[str]:
    """Top-level packages a real `python -m scheduler ARGS` imported (-X importtime)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(PINGAN_DATA_DIR=str(tmp_path / "var"), PINGAN_LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "scheduler", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "scheduler" in names  # the measurement itself works
    return names


def test_help_loads_no_heavy_library(tmp_path: Path) -> None:
    loaded = _imported(tmp_path, "--help")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_campaigns_run_loads_no_web_provider_pdf_or_password_library(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    pingan(tmp_path, "recipients", "generate", "--count", "50", "--out", str(csv))
    pingan(tmp_path, "recipients", "import", str(csv), "--format", "json")
    loaded = _imported(
        tmp_path, "campaigns", "run", "weekly-antifraud", "--at", "2022-10-10T09:00", "-f", "json"
    )
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_users_commands_still_load_what_they_need(tmp_path: Path) -> None:
    """The lazy imports happen: a command that hashes passwords does load argon2."""
    pingan(tmp_path, "users", "list", "--format", "json")
    loaded = _imported(tmp_path, "users", "list", "--format", "json")
    assert "argon2" in loaded
