"""`pingan run` in real processes: a standby serves HTTP too, /healthz tells the roles apart,
and no log line of the service, uvicorn's included, carries a phone number, even for an
internal error whose exception quotes the numbers of the request."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from scheduler.core import Core
from scheduler.models import OptOut

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "https://pingan.example.org"
SECRET = "provider-secret"
# Any 11-digit mobile number, bare or with +86: none may reach a log line.
PHONE = re.compile(r"(?<!\d)(?:\+?86)?1\d{10}(?!\d)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """A `pingan run --no-dispatch` serving HTTP on its own port; stderr collected."""

    def __init__(self, core: Core, name: str, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
        env.update(
            PINGAN_DATABASE_URL=core.settings.effective_database_url,
            PINGAN_DATA_DIR=str(core.settings.data_dir / name),
            PINGAN_CONFIG_DIR=str(core.settings.config_dir),
            PINGAN_TEMPLATES_DIR=str(core.settings.templates_dir),
            PINGAN_LOG_FORMAT="json",
            PINGAN_HTTP_PORT=str(self.port),
            PINGAN_PUBLIC_BASE_URL=PUBLIC,
            PINGAN_TWILIO__AUTH_TOKEN=SECRET,
        )
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "run", "--no-dispatch", "--standby-poll", "0.2"],
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

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(f'"event": "{event}"' in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {event} in:\n{''.join(self.lines)}")

    def wait_http(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(self.base + "/healthz", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"no HTTP on {self.base}:\n{''.join(self.lines)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code


def _opt_outs(core: Core) -> set[str]:
    with Session(core.engine) as s:
        return set(s.scalars(select(OptOut.phone)))


def test_a_standby_serves_webhooks_api_and_health(core: Core) -> None:
    core.engine  # noqa: B018 - create the schema before two processes race for it
    leader = Node(core, "a")
    standby = None
    try:
        leader.wait_for("service.active")
        standby = Node(core, "b")
        standby.wait_for("service.standby")
        standby.wait_http()
        leader.wait_http()
        roles = {
            node.base: httpx.get(node.base + "/healthz", timeout=10) for node in (leader, standby)
        }
        assert roles[leader.base].status_code == roles[standby.base].status_code == 200
        assert roles[leader.base].json()["role"] == "leader"
        assert roles[standby.base].json()["role"] == "standby"
        assert roles[standby.base].json()["scheduler"] == "standby"

        path = "/webhooks/twilio/inbound"
        form = {"From": "+8613800000001", "Body": "退订", "MessageSid": "SMx"}
        signature = RequestValidator(SECRET).compute_signature(PUBLIC + path, form)
        r = httpx.post(standby.base + path, data=form, headers={"X-Twilio-Signature": signature})
        assert r.status_code == 200
        r = httpx.post(standby.base + "/api/opt-outs", json={"phones": ["13800000002"]})
        assert r.status_code == 200
        assert _opt_outs(core) == {"13800000001", "13800000002"}
        metrics = httpx.get(standby.base + "/metrics").text
        assert "pingan_leader 0.0" in metrics
        assert "pingan_leader 1.0" in httpx.get(leader.base + "/metrics").text
    finally:
        assert leader.stop() == 0
        if standby is not None:
            assert standby.stop() == 0


def test_a_standby_on_the_leaders_port_takes_it_over_when_it_leads(core: Core) -> None:
    """Two nodes on one host and one port: the standby cannot bind until the leader goes."""
    if core.engine.dialect.name != "sqlite":
        pytest.skip("one backend is enough for the port")
    leader = Node(core, "a")
    standby = None
    try:
        leader.wait_for("service.active")
        leader.wait_http()
        standby = Node(core, "b", port=leader.port)
        standby.wait_for("service.standby")
        first = httpx.get(leader.base + "/healthz", timeout=10).json()
        assert first["role"] == "leader"
        assert leader.stop() == 0
        standby.wait_for("service.active")
        standby.wait_http()
        second = httpx.get(standby.base + "/healthz", timeout=10).json()
        assert second["role"] == "leader"
        assert second["lock_holder"] != first["lock_holder"]
    finally:
        leader.stop()
        if standby is not None:
            assert standby.stop() == 0


def test_no_phone_number_reaches_any_log_line(core: Core) -> None:
    if core.engine.dialect.name != "sqlite":
        pytest.skip("one backend is enough for the log chain")
    node = Node(core, "masked")
    try:
        node.wait_for("service.active")
        node.wait_http()
        with core.engine.begin() as conn:
            conn.execute(text("DROP TABLE opt_outs"))  # the next opt-out fails inside the store
        r = httpx.post(
            node.base + "/api/opt-outs",
            json={"phones": ["13812345678", "+86 139 8765 4321"], "reason": "投诉 13611112222"},
        )
        assert r.status_code == 500
        assert "1381234" not in r.text
        httpx.get(node.base + "/api/quota?rule=13755556666")  # a number in the access log line
        bad = {"From": "+8615011112222", "Body": "退订"}
        httpx.post(node.base + "/webhooks/twilio/inbound?to=15933334444", data=bad)
    finally:
        assert node.stop() == 0
    log = "".join(node.lines)
    assert "Exception in ASGI application" in log  # uvicorn's own traceback, through the chain
    assert "http.internal_error" in log
    assert "no such table: opt_outs" in log
    assert "138****5678" in log and "139****4321" in log  # logged, masked
    assert "137****6666" in log
    assert PHONE.findall(log) == []
