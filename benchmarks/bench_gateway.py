"""Domestic gateway throughput: messages/s through each official SDK to its fake, next to a bare
HTTP client's ceiling on the same fake.

    .venv/bin/python benchmarks/bench_gateway.py --gateway aliyun [--messages 20000]

The fake runs as its own process (answering each call after `--latency-ms`). In one run:
- ceiling: bare `requests` threads (keep-alive, `--concurrency` of them) posting the same
  request the SDK sends for a full batch (same action, form and signature headers, not
  recomputed per call beyond the body hash the fake checks): what the fake lets through;
- sdk: the provider's `send_batch` (the official SDK, batches of its `max_batch`) from the
  same number of threads: the SDK's own cost per call and per message;
- pingan: `Dispatcher.run(until_empty=True)` draining an outbox of the same size on SQLite
  (or `--database-url`), with claims, attempts, counters and statuses recorded.

Each gateway is one entry of GATEWAYS: how to start its fake, the settings that point its
provider there, and one bare request carrying a batch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from scheduler.core import Core  # noqa: E402
from scheduler.dispatcher import Dispatcher  # noqa: E402
from scheduler.gateway_templates import load_gateway_templates  # noqa: E402
from scheduler.logs import configure_logging  # noqa: E402
from scheduler.providers import make_provider  # noqa: E402
from scheduler.providers.base import OutboundMessage  # noqa: E402
from scheduler.settings import (  # noqa: E402
    AliyunSettings,
    DispatchSettings,
    Settings,
    TencentSettings,
)
from scheduler.simulation import ManualClock  # noqa: E402
from scheduler.testing import fake_tencent  # noqa: E402
from tests.factories import add_recipients  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)
TEMPLATE = "slogan-01"


@dataclass(frozen=True)
class Gateway:
    """How the benchmark drives one gateway."""

    # The fake's module (run with `--port N --latency-ms X`, prints its base URL).
    fake_module: str
    # Settings pointing the provider at the fake (base URL given).
    settings: Callable[[str], dict[str, object]]
    # One bare request carrying `phones` as the SDK's batch call does; raises on refusal.
    bare_post: Callable[[requests.Session, str, list[str]], None]


def _aliyun_settings(base: str) -> dict[str, object]:
    return {
        "provider": "aliyun",
        "aliyun": AliyunSettings(
            access_key_id="AK-bench",
            access_key_secret=SecretStr("bench-secret"),
            sign_name="平安上虞",
            endpoint=base.removeprefix("http://"),
            protocol="http",
            timeout_seconds=30,
        ),
    }


@functools.cache
def _code(gateway: str) -> str:
    mapping = load_gateway_templates(ROOT / "config").get(gateway, TEMPLATE)
    assert mapping is not None
    return mapping.code


def _aliyun_bare(session: requests.Session, base: str, phones: list[str]) -> None:
    data = urllib.parse.urlencode(
        {
            "PhoneNumberJson": json.dumps(phones),
            "SignNameJson": json.dumps(["平安上虞"] * len(phones), ensure_ascii=False),
            "TemplateParamJson": json.dumps([{"district": "上虞"}] * len(phones)),
        }
    ).encode()
    r = session.post(
        f"{base}/?TemplateCode={_code('aliyun')}&OutId=1",
        data=data,
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-acs-action": "SendBatchSms",
            "x-acs-version": "2017-05-25",
            "x-acs-content-sha256": hashlib.sha256(data).hexdigest(),
            "authorization": "ACS3-HMAC-SHA256 Credential=AK-bench,SignedHeaders=host,Signature=0",
        },
    )
    assert r.status_code == 200 and r.json()["Code"] == "OK", r.text


def _tencent_settings(base: str) -> dict[str, object]:
    return {
        "provider": "tencent",
        "tencent": TencentSettings(
            secret_id=fake_tencent.SECRET_ID,
            secret_key=SecretStr(fake_tencent.SECRET_KEY),
            sdk_app_id=fake_tencent.SDK_APP_ID,
            sign_name=fake_tencent.SIGN_NAME,
            endpoint=base.removeprefix("http://"),
            protocol="http",
            timeout_seconds=30,
        ),
    }


def _tencent_bare(session: requests.Session, base: str, phones: list[str]) -> None:
    """SendSms as the SDK posts it, TC3-HMAC-SHA256 signed (the fake verifies it)."""
    body = json.dumps(
        {
            "PhoneNumberSet": ["+86" + p for p in phones],
            "SmsSdkAppId": fake_tencent.SDK_APP_ID,
            "SignName": fake_tencent.SIGN_NAME,
            "TemplateId": _code("tencent"),
            "TemplateParamSet": ["上虞"],
            "SessionContext": "bench",
        }
    ).encode()
    host = base.removeprefix("http://")
    now = int(time.time())
    date = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d")
    canonical = (
        f"POST\n/\n\ncontent-type:application/json\nhost:{host}\n\ncontent-type;host\n"
        f"{hashlib.sha256(body).hexdigest()}"
    )
    signature = fake_tencent.tc3_signature(
        fake_tencent.SECRET_KEY, date, "sms", str(now), canonical
    )
    r = session.post(
        f"{base}/",
        data=body,
        headers={
            "Content-Type": "application/json",
            "Host": host,
            "X-TC-Action": "SendSms",
            "X-TC-Version": "2021-01-11",
            "X-TC-Timestamp": str(now),
            "X-TC-Region": "ap-guangzhou",
            "Authorization": f"TC3-HMAC-SHA256 Credential={fake_tencent.SECRET_ID}/{date}/sms/"
            f"tc3_request, SignedHeaders=content-type;host, Signature={signature}",
        },
    )
    assert r.status_code == 200 and "Error" not in r.json()["Response"], r.text


GATEWAYS: dict[str, Gateway] = {
    "aliyun": Gateway("scheduler.testing.fake_aliyun", _aliyun_settings, _aliyun_bare),
    "tencent": Gateway("scheduler.testing.fake_tencent", _tencent_settings, _tencent_bare),
}


def start_fake(gw: Gateway, port: int, latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            gw.fake_module,
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _phones(start: int, n: int) -> list[str]:
    return [f"139{start + i:08d}" for i in range(n)]


def _threads(n_threads: int, work: Callable[[int], None]) -> float:
    """Run work(k) on n_threads threads; seconds taken. A thread's error fails the run."""
    failures: list[BaseException] = []

    def run(k: int) -> None:
        try:
            work(k)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_threads)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"a thread failed: {failures[0]!r}")
    return time.perf_counter() - began


def ceiling(gw: Gateway, base: str, n: int, batch: int, concurrency: int) -> float:
    calls = max(concurrency, n // batch)
    per = calls // concurrency
    with requests.Session() as warm:  # connection set-up and the request's parts, untimed
        gw.bare_post(warm, base, _phones(9_000_000, batch))

    def work(k: int) -> None:
        s = requests.Session()
        for i in range(per):
            gw.bare_post(s, base, _phones(10_000_000 + (k * per + i) * batch, batch))
        s.close()

    return per * concurrency * batch / _threads(concurrency, work)


def sdk(settings: Settings, n: int, concurrency: int) -> tuple[float, int]:
    provider = make_provider(settings)
    mapping = load_gateway_templates(settings.config_dir).get(provider.name, TEMPLATE)
    assert mapping is not None
    params = dict.fromkeys(mapping.params, "上虞")
    batch = provider.max_batch
    calls = max(concurrency, n // batch)
    per = calls // concurrency

    def work(k: int) -> None:
        for i in range(per):
            first = 50_000_000 + (k * per + i) * batch
            msgs = [
                OutboundMessage(first + j, p, "【平安上虞】…", "mobile", 1, TEMPLATE, params)
                for j, p in enumerate(_phones(first, batch))
            ]
            results = provider.send_batch(msgs)
            bad = [r for r in results if isinstance(r, Exception)]
            assert not bad, bad[0]

    elapsed = _threads(concurrency, work)
    provider.close()
    return per * concurrency * batch / elapsed, batch


def pingan(settings: Settings, n: int) -> float:
    clock = ManualClock(MONDAY + dt.timedelta(minutes=1))
    core = Core(settings, clock=clock)
    add_recipients(core.engine, core.district, n)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    d = Dispatcher(core.engine, make_provider(settings), settings, clock=clock)
    began = time.perf_counter()
    stats = d.run(until_empty=True)
    elapsed = time.perf_counter() - began
    d.close()
    core.close()
    assert stats.sent == n, stats
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", choices=sorted(GATEWAYS), required=True)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=18766)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the fake's latency")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to run on (a scratch database); default: a SQLite file",
    )
    args = parser.parse_args()
    configure_logging("json", "WARNING")
    from benchmarks._db import ScratchDatabases

    gw = GATEWAYS[args.gateway]
    fake, base = start_fake(gw, args.port, args.latency_ms)
    work = Path(tempfile.mkdtemp(prefix="pingan-bench-gateway-"))
    dbs = ScratchDatabases(work, args.database_url)
    settings = Settings(
        data_dir=work,
        database_url=dbs.fresh("gateway"),
        config_dir=ROOT / "config",
        templates_dir=ROOT / "templates" / "messages",
        dispatch=DispatchSettings(
            concurrency=args.concurrency, rate_per_second=1e6, batch_size=1000
        ),
        log_format="json",
        log_level="WARNING",
        **gw.settings(base),  # type: ignore[arg-type]
    )
    try:
        print(f"gateway: {args.gateway}, fake latency: {args.latency_ms:g} ms per call")
        s, batch = sdk(settings, args.messages, args.concurrency)
        c = ceiling(gw, base, args.messages, batch, args.concurrency)
        print(
            f"ceiling : {c:,.0f} messages/s (bare requests, {args.concurrency} threads, "
            f"{batch} numbers a call)"
        )
        print(f"sdk     : {s:,.0f} messages/s (provider.send_batch, official SDK)")
        p = pingan(settings, args.messages)
        print(f"pingan  : {p:,.0f} messages/s ({args.messages:,} through the dispatcher)")
        print()
        print(f"sdk / ceiling    : {s / c:.0%}")
        print(f"pingan / ceiling : {p / c:.0%}")
        machine = f"{platform.platform()}, {os.cpu_count()} CPUs"
        print(f"machine: {machine}, Python {platform.python_version()}")
    finally:
        fake.terminate()
        fake.wait()
        if fake.stdout is not None:
            fake.stdout.close()
        dbs.drop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
