"""An expansion killed part-way (a real process, SIGKILL) and run again completes exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.models import Message, Occurrence, OccurrenceState, OptOut
from tests.factories import add_recipients

ROOT = Path(__file__).resolve().parents[2]
N = 200_000


def _env(core: Core) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATABASE_URL=core.settings.effective_database_url,
        PINGAN_DATA_DIR=str(core.settings.data_dir),
        PINGAN_CONFIG_DIR=str(core.settings.config_dir),
        PINGAN_TEMPLATES_DIR=str(core.settings.templates_dir),
        PINGAN_LOG_FORMAT="json",
    )
    return env


def _run_cmd() -> list[str]:
    return [
        sys.executable,
        "-m",
        "scheduler",
        "campaigns",
        "run",
        "weekly-antifraud",
        "--at",
        "2022-10-10T09:00",
        "--format",
        "json",
    ]


@pytest.mark.slow
def test_killed_expansion_resumes_without_duplicates(core: Core) -> None:
    add_recipients(core.engine, core.district, N)
    with Session(core.engine) as s, s.begin():
        for phone in ("13800000003", "18600000004"):
            s.add(OptOut(phone=phone, source="test", reason=None, created_at=core.clock()))
    proc = subprocess.Popen(
        _run_cmd(), env=_env(core), cwd=ROOT, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    killed_at = 0
    while time.monotonic() < deadline and proc.poll() is None:
        with Session(core.engine) as s:
            cursor = s.scalar(select(Occurrence.cursor)) or 0
        if cursor > N // 5:
            proc.send_signal(signal.SIGKILL)
            killed_at = cursor
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at, "the expansion finished or stalled before it could be killed"
    with Session(core.engine) as s:
        occ = s.scalars(select(Occurrence)).one()
        partial = s.scalar(select(func.count()).select_from(Message)) or 0
    assert occ.state == OccurrenceState.EXPANDING
    assert 0 < partial < N - 2

    done = subprocess.run(_run_cmd(), env=_env(core), cwd=ROOT, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    with Session(core.engine) as s:
        occ = s.scalars(select(Occurrence)).one()
        total = s.scalar(select(func.count()).select_from(Message))
        distinct = s.scalar(select(func.count(func.distinct(Message.recipient_id))))
    assert occ.state == OccurrenceState.READY
    assert total == distinct == N - 2
    assert occ.queued == N - 2
    assert occ.excluded == {"opted_out": 2}
