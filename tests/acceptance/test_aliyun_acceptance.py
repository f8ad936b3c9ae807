"""Issue 14's acceptance for Alibaba Cloud, in subprocesses as an office runs it: with
PINGAN_PROVIDER=aliyun and the fake gateway's endpoint, `pingan run --once` sends the weekly
SMS through the real SDK, the gateway pushes its receipts to the running service, and
`pingan delivery stats` shows them delivered; `pingan check` verifies the template codes."""

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

from tests.acceptance.test_cli_acceptance import ROOT, as_json, pingan
from tests.integration.test_web import _free_port

TOKEN = "office-push-token"


def _fake(receipt_url: str | None) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    extra = ["--receipt-url", receipt_url] if receipt_url else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler.testing.fake_aliyun", "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def _aliyun_env(endpoint: str, port: int) -> dict[str, str]:
    return {
        "PINGAN_PROVIDER": "aliyun",
        "PINGAN_ALIYUN__ACCESS_KEY_ID": "LTAI-office",
        "PINGAN_ALIYUN__ACCESS_KEY_SECRET": "office-secret",
        "PINGAN_ALIYUN__SIGN_NAME": "平安上虞",
        "PINGAN_ALIYUN__ENDPOINT": endpoint.removeprefix("http://"),
        "PINGAN_ALIYUN__PROTOCOL": "http",
        "PINGAN_ALIYUN__WEBHOOK_TOKEN": TOKEN,
        "PINGAN_HTTP_PORT": str(port),
    }


def _fake_stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/_fake/stats", timeout=10) as resp:
        data: dict[str, Any] = json.load(resp)
    return data


def test_weekly_sms_through_aliyun_with_pushed_receipts(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    pingan(tmp_path, "recipients", "generate", "--count", "200", "--out", str(csv))
    pingan(tmp_path, "recipients", "import", str(csv))
    port = _free_port()
    receipts = f"http://127.0.0.1:{port}/webhooks/aliyun/status?token={TOKEN}"
    fake, base = _fake(receipts)
    env = _aliyun_env(base, port)
    service: subprocess.Popen[str] | None = None
    try:
        assert pingan(tmp_path, "check", **env).returncode == 0
        pingan(tmp_path, "run", "--once", "--clock", "2022-10-10T09:30", **env)
        assert _fake_stats(base)["sent"] == 200
        stats = as_json(pingan(tmp_path, "delivery", "stats", "--format", "json", **env))
        assert stats["rows"][0]["sent"] == 200 and stats["rows"][0]["delivered"] == 0
        # The service comes up; the gateway, which kept retrying its pushes, now lands them.
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
        run_env.update(PINGAN_DATA_DIR=str(tmp_path / "var"), PINGAN_LOG_FORMAT="json", **env)
        service = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "run"],
            cwd=ROOT,
            env=run_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 90
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            stats = as_json(pingan(tmp_path, "delivery", "stats", "--format", "json", **env))
            row = stats["rows"][0]
            if row["delivered"] == 200:
                break
            time.sleep(1)
        assert row["delivered"] == 200 and row["sent"] == 0, row
    finally:
        if service is not None:
            service.send_signal(signal.SIGINT)
            service.wait(timeout=60)
        _stop(fake)


def test_check_names_a_missing_template_code_and_a_different_signature(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    for f in (ROOT / "config").iterdir():
        if f.is_file():
            (config / f.name).write_bytes(f.read_bytes())
    mapping = (config / "gateway_templates.yaml").read_text(encoding="utf-8")
    # slogan-03 loses its aliyun code; survey-notice's parameters lose the hotline and read
    # a variable SMS templates do not have.
    mapping = mapping.replace("  slogan-03:\n    code: SMS_", "  slogan-03x:\n    code: SMS_", 1)
    mapping = mapping.replace('      hotline: "{{ hotline }}"\n', '      extra: "{{ nope }}"\n', 1)
    (config / "gateway_templates.yaml").write_text(mapping, encoding="utf-8")
    env = _aliyun_env("127.0.0.1:9", _free_port())
    env["PINGAN_ALIYUN__SIGN_NAME"] = "平安浙江"
    env["PINGAN_CONFIG_DIR"] = str(config)
    done = pingan(tmp_path, "check", "--format", "json", ok=False, **env)
    assert done.returncode == 1
    problems = {p["path"]: p for p in as_json(done)["problems"]}
    missing = problems["aliyun.slogan-03"]
    assert missing["file"] == str(config / "gateway_templates.yaml") and missing["line"]
    assert "no aliyun template code" in missing["reason"]
    survey = problems["aliyun.survey-notice.params"]
    assert "hotline" in survey["reason"] or "nope" in survey["reason"]
    reasons = " ".join(p["reason"] for p in problems.values())
    assert "hotline" in reasons and "nope" in reasons
    sign = problems["PINGAN_ALIYUN__SIGN_NAME"]
    assert sign["warning"] and "平安上虞" in sign["reason"]
    # The warning alone does not fail the check.
    env["PINGAN_ALIYUN__SIGN_NAME"] = "平安上虞"
    env.pop("PINGAN_CONFIG_DIR")
    assert pingan(tmp_path, "check", **env).returncode == 0
    env["PINGAN_ALIYUN__SIGN_NAME"] = "平安浙江"
    warned = pingan(tmp_path, "check", **env)
    assert "warning:" in warned.stdout
