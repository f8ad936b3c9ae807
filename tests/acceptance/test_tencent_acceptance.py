"""Issue 14's acceptance for Tencent Cloud SMS, as an office runs it: the sample district, the
fake gateway in its own process (`python -m scheduler.testing.fake_tencent`), `pingan run
--once --clock 2022-10-10T09:30` sending the weekly SMS through the real SDK, the service
(`pingan run`) receiving the status reports Tencent pushes, and `pingan delivery stats`
showing them delivered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from scheduler.testing.fake_tencent import SDK_APP_ID, SECRET_ID, SECRET_KEY, SIGN_NAME
from tests.acceptance.test_cli_acceptance import as_json, pingan
from tests.integration.test_web import _free_port

ROOT = Path(__file__).resolve().parents[2]
N = 200
TOKEN = "acceptance-token"


def _fake_stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/_fake/stats", timeout=10) as resp:
        data: dict[str, Any] = json.load(resp)
    return data


def test_weekly_sms_through_tencent_with_pushed_receipts(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    pingan(tmp_path, "recipients", "generate", "--count", str(N), "--out", str(csv))
    assert (
        as_json(pingan(tmp_path, "recipients", "import", str(csv), "--format", "json"))["imported"]
        == N
    )
    http_port = _free_port()
    receipt_url = f"http://127.0.0.1:{http_port}/webhooks/tencent/status?token={TOKEN}"
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scheduler.testing.fake_tencent",
            "--port",
            str(_free_port()),
            "--receipt-url",
            receipt_url,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    service: subprocess.Popen[str] | None = None
    try:
        assert fake.stdout is not None
        base = fake.stdout.readline().strip()
        env = {
            "PINGAN_PROVIDER": "tencent",
            "PINGAN_TENCENT__SECRET_ID": SECRET_ID,
            "PINGAN_TENCENT__SECRET_KEY": SECRET_KEY,
            "PINGAN_TENCENT__SDK_APP_ID": SDK_APP_ID,
            "PINGAN_TENCENT__SIGN_NAME": SIGN_NAME,
            "PINGAN_TENCENT__ENDPOINT": base.removeprefix("http://"),
            "PINGAN_TENCENT__PROTOCOL": "http",
            "PINGAN_TENCENT__WEBHOOK_TOKEN": TOKEN,
            "PINGAN_HTTP_PORT": str(http_port),
        }
        check = pingan(tmp_path, "check", "--format", "json", ok=False, **env)
        assert check.returncode == 0, check.stdout + check.stderr
        assert as_json(check)["problems"] == []  # codes mapped, signature as the district's
        other = pingan(tmp_path, "check", ok=False, **{**env, "PINGAN_TENCENT__SIGN_NAME": "别的"})
        assert "PINGAN_TENCENT__SIGN_NAME" in other.stdout + other.stderr
        pingan(tmp_path, "run", "--once", "--clock", "2022-10-10T09:30", **env)
        assert _fake_stats(base)["created"] == N
        assert _fake_stats(base)["duplicates"] == 0
        sent = as_json(pingan(tmp_path, "delivery", "stats", "--format", "json", **env))
        assert sent["rows"][0]["delivered"] == 0  # nothing received the reports yet

        # The service is up: the reports Tencent kept retrying now land.
        service_env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
        service_env.update(
            PINGAN_DATA_DIR=str(tmp_path / "var"),
            PINGAN_LOG_FORMAT="json",
            PINGAN_MISFIRE_GRACE_HOURS="0",  # no catch-up at today's real time
            **env,
        )
        service = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "run", "--no-dispatch"],
            cwd=ROOT,
            env=service_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = _fake_stats(base)
            if stats["receipts_pending"] == 0 and stats["receipt_posts"].get("200"):
                break
            time.sleep(0.2)
        assert stats["receipts_pending"] == 0, stats
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    finally:
        if service is not None and service.poll() is None:
            service.kill()
            service.wait(timeout=30)
        fake.terminate()
        fake.wait(timeout=30)
        if fake.stdout is not None:
            fake.stdout.close()
    stats_out = as_json(pingan(tmp_path, "delivery", "stats", "--format", "json"))
    (row,) = stats_out["rows"]
    assert row["delivered"] == N
    assert row["queued"] == row["sending"] == row["unknown"] == row["failed"] == 0
