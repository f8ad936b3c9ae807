"""Only one `pingan run` fires jobs per database; a second waits as a standby (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scheduler.core import Core

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    """A `pingan run` process whose JSON log lines are collected as they come."""

    def __init__(self, core: Core, name: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
        env.update(
            PINGAN_DATABASE_URL=core.settings.effective_database_url,
            PINGAN_DATA_DIR=str(core.settings.data_dir / name),
            PINGAN_CONFIG_DIR=str(core.settings.config_dir),
            PINGAN_TEMPLATES_DIR=str(core.settings.templates_dir),
            PINGAN_LOG_FORMAT="json",
            PINGAN_DISPATCH__POLL_SECONDS="0.2",
        )
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "run", "--no-http", "--standby-poll", "0.2"],
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def saw(self, event: str) -> bool:
        return any(f'"event": "{event}"' in line for line in self.lines)

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.saw(event):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {event} in:\n{''.join(self.lines)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code


def test_second_run_is_a_standby_until_the_first_stops(core: Core) -> None:
    core.engine  # noqa: B018 - create the schema before two processes race for it
    first = Proc(core, "a")
    second = None
    try:
        first.wait_for("service.active")
        second = Proc(core, "b")
        second.wait_for("service.standby")
        time.sleep(1.0)
        assert not second.saw("service.active")
        assert not second.saw("service.jobs")
        assert first.stop() == 0
        assert first.saw("service.stopped")
        second.wait_for("service.active")
        second.wait_for("service.jobs")
        assert second.stop() == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_the_live_scheduler_fires_a_campaign_at_its_time(core: Core, tmp_path: Path) -> None:
    """APScheduler, with its job store in the project database, wakes the service on time."""
    import datetime as dt
    import shutil

    if core.engine.dialect.name != "sqlite":
        pytest.skip("one backend is enough for the clock itself")
    config = tmp_path / "config"
    shutil.copytree(core.settings.config_dir, config)
    tz = core.settings.tz
    at = (dt.datetime.now(tz) + dt.timedelta(seconds=4)).replace(microsecond=0, tzinfo=None)
    today = at.date().isoformat()
    (config / "campaigns.yaml").write_text(
        "campaigns:\n"
        "  - name: soon\n"
        "    template: participation-ways\n"
        f"    schedule: {{at: {at.isoformat()}}}\n"
        f"    active: {{start: {today}, end: {today}}}\n",
        encoding="utf-8",
    )
    from tests.factories import add_recipients

    add_recipients(core.engine, core.district, 20)
    core.settings.config_dir = config
    proc = Proc(core, "live")
    try:
        proc.wait_for("service.active")
        proc.wait_for("occurrence.expanded", timeout=30)
    finally:
        assert proc.stop() == 0
    fired = [line for line in proc.lines if '"event": "occurrence.fired"' in line]
    assert len(fired) == 1
    assert f'"scheduled_at": "{at.isoformat()}+08:00"' in fired[0]


def test_sighup_rebuilds_jobs_from_edited_campaigns(core: Core, tmp_path: Path) -> None:
    import datetime as dt
    import shutil

    if core.engine.dialect.name != "sqlite":
        pytest.skip("one backend is enough for reloading")
    config = tmp_path / "config"
    shutil.copytree(core.settings.config_dir, config)
    core.settings.config_dir = config
    proc = Proc(core, "reload")
    try:
        proc.wait_for("service.jobs")
        assert not any('"nightly-test"' in line for line in proc.lines)
        year = dt.date.today().year
        with (config / "campaigns.yaml").open("a", encoding="utf-8") as fh:
            fh.write(
                "  - name: nightly-test\n"
                "    template: participation-ways\n"
                '    schedule: {cron: "0 9 * * mon"}\n'
                f"    active: {{start: {year}-01-01, end: {year + 1}-12-31}}\n"
            )
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for("campaigns.reloaded")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            '"service.jobs"' in line and "nightly-test" in line for line in proc.lines
        ):
            time.sleep(0.05)
        assert any('"service.jobs"' in line and "nightly-test" in line for line in proc.lines)
    finally:
        assert proc.stop() == 0
