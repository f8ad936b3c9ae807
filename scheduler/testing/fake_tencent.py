"""A fake Tencent Cloud SMS API (3.0) for tests and benchmarks, on 127.0.0.1.

It answers what the official `tencentcloud-sdk-python-sms` client sends when pointed at it
(HttpProfile(endpoint="127.0.0.1:N", protocol="http")): a JSON POST to `/` named by its
X-TC-Action header, signed TC3-HMAC-SHA256, which the fake verifies as Tencent does. Actions:
SendSms (up to 200 numbers, a SendStatus per number) and PullSmsSendStatusByPhoneNumber (the
status reports of one number in a time window). Every template code is accepted unless told
otherwise. It keeps what it "sent", counts sends per number (a test proves nothing went out
twice), and injects the faults the real gateway has: RequestLimitExceeded for a whole call,
a per-number daily limit, a 500 after accepting, a delay past the client's timeout after
accepting, permanent per-number codes, an unapproved template.

With a receipt URL (`--receipt-url`, the service's /webhooks/tencent/status?token=…), it pushes
each message's status report as Tencent does (a JSON array, retried until answered
{"result": 0}); without one, a sent message is reported delivered when looked up by pull.
Replies (上行) are pushed with `post_reply` (or POST /_fake/reply {"mobile", "text"}).

Run in a thread (`running_fake_tencent`) or as its own process:
    python -m scheduler.testing.fake_tencent --port 8766 --throttle 0.1
with GET /_fake/stats for its counters (and POST /_fake/release to end a --hold-after).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET_ID = "AKIDfakefakefakefakefakefakefakefake"
SECRET_KEY = "fake-secret-key"
SDK_APP_ID = "1400000001"
SIGN_NAME = "平安上虞"  # the sample district's signature, without 【】
MAX_NUMBERS = 200
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
MESSAGES = {
    "RequestLimitExceeded": "请求的次数超过了频率限制",
    "LimitExceeded.PhoneNumberDailyLimit": "单个手机号日下发短信条数超过设定的上限",
    "InvalidParameterValue.IncorrectPhoneNumber": "手机号格式错误",
    "FailedOperation.PhoneNumberInBlacklist": "手机号在免打扰名单库中",
    "FailedOperation.TemplateIncorrectOrUnapproved": "模板未审批或内容不匹配",
    "FailedOperation.SignatureIncorrectOrUnapproved": "签名未审批或格式错误",
    "AuthFailure.SignatureFailure": "请求签名验证失败",
    "AuthFailure.SecretIdNotFound": "密钥不存在",
    "InvalidParameterValue.SdkAppIdNotExist": "SdkAppId不存在",
    "LimitExceeded.PhoneNumberCountLimit": "单次请求的手机号个数超过200",
    "MissingParameter": "缺少参数",
    "InvalidAction": "接口不存在",
}


@dataclass
class FakeConfig:
    # None: accept whatever the client sends (the command line's default, so an office's
    # rehearsal works with its own settings); the tests pin them to check what the SDK sends.
    secret_id: str | None = SECRET_ID
    secret_key: str | None = SECRET_KEY
    sdk_app_id: str | None = SDK_APP_ID
    sign_name: str | None = SIGN_NAME
    # Share of SendSms calls answered RequestLimitExceeded (nothing sent).
    throttle: float = 0.0
    # Sends a number takes per (Beijing) day; later ones get LimitExceeded.PhoneNumberDailyLimit.
    daily_limit: int | None = None
    # Share of SendSms calls accepted, then answered HTTP 500 (the client cannot tell).
    fail_500_after_create: float = 0.0
    # Share of SendSms calls accepted, then answered `timeout_seconds` late.
    timeout_after_create: float = 0.0
    timeout_seconds: float = 2.0
    # Per-number codes and the share of numbers that meet each.
    permanent: dict[str, float] = field(default_factory=dict)
    # Template codes answered TemplateIncorrectOrUnapproved ("*": every one).
    unapproved_templates: set[str] = field(default_factory=set)
    undelivered_share: float = 0.0
    # A message shows in pulls only this long after it was sent (its carrier report's delay).
    report_delay: float = 0.0
    seed: int = 7
    # After this many messages, hold every further SendSms answer (after accepting it) until
    # POST /_fake/release: a dispatcher is then certainly waiting on Tencent, mid-batch.
    hold_after: int | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    # Push status reports here (the service's /webhooks/tencent/status?token=…).
    receipt_url: str | None = None
    push_interval: float = 0.2


@dataclass
class FakeSms:
    serial: str
    phone: str  # E.164, as sent
    template: str
    params: list[str]
    sign: str
    session: str
    created: dt.datetime
    final: str = "SUCCESS"  # or FAIL

    def report(self) -> dict[str, Any]:
        """The status report Tencent pushes for it."""
        ok = self.final == "SUCCESS"
        return {
            "user_receive_time": self.created.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S"),
            "nationcode": "86",
            "mobile": self.phone.removeprefix("+86"),
            "report_status": self.final,
            "errmsg": "DELIVRD" if ok else "MK:0001",
            "description": "用户短信送达成功" if ok else "空号或停机",
            "sid": self.serial,
        }


def tc3_signature(
    secret_key: str, date: str, service: str, timestamp: str, canonical_request: str
) -> str:
    """TC3-HMAC-SHA256 as Tencent Cloud documents it (the fake checks what the SDK signed)."""

    def mac(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()

    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    to_sign = f"TC3-HMAC-SHA256\n{timestamp}\n{date}/{service}/tc3_request\n{digest}"
    key = mac(mac(mac(("TC3" + secret_key).encode(), date), service), "tc3_request")
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


class ApiError(Exception):
    def __init__(self, code: str, http_status: int = 200) -> None:
        super().__init__(code)
        self.code = code
        self.http_status = http_status


class FakeTencent:
    """The fake's state; thread-safe."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.rng = random.Random(self.config.seed)
        self.jitter_rng = random.Random(self.config.seed + 1)
        self.lock = threading.Lock()
        self.messages: dict[str, FakeSms] = {}
        self.order: list[str] = []
        self.per_number: Counter[str] = Counter()
        self.per_day: Counter[tuple[str, dt.date]] = Counter()
        self.requests: Counter[str] = Counter()
        self.receipt_posts: Counter[int] = Counter()
        self.held = 0
        self.released = threading.Event()
        self._to_push: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.base_url = ""
        self.endpoint = ""

    # -- state ---------------------------------------------------------------------------

    def created_count(self) -> int:
        with self.lock:
            return len(self.messages)

    def duplicates(self) -> list[str]:
        """Numbers sent more than one message."""
        with self.lock:
            return [p for p, n in self.per_number.items() if n > 1]

    def sent_numbers(self) -> list[str]:
        with self.lock:
            return [self.messages[s].phone for s in self.order]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "created": len(self.messages),
                "duplicates": sum(1 for n in self.per_number.values() if n > 1),
                "requests": dict(self.requests),
                "held": self.held,
                "receipts_pending": len(self._to_push),
                "receipt_posts": {str(k): v for k, v in self.receipt_posts.items()},
            }

    def hold(self) -> None:
        limit = self.config.hold_after
        with self.lock:
            if limit is None or len(self.messages) <= limit or self.released.is_set():
                return
            self.held += 1
        self.released.wait(timeout=600)
        with self.lock:
            self.held -= 1

    def delay(self) -> None:
        c = self.config
        if c.latency_ms <= 0 and c.jitter_ms <= 0:
            return
        with self.lock:
            jitter = self.jitter_rng.random() * c.jitter_ms
        time.sleep((c.latency_ms + jitter) / 1000)

    def _roll(self) -> str:
        """What to do with one SendSms call."""
        c = self.config
        with self.lock:
            x = self.rng.random()
        acc = 0.0
        for outcome, share in (
            ("throttle", c.throttle),
            ("500", c.fail_500_after_create),
            ("timeout", c.timeout_after_create),
        ):
            acc += share
            if x < acc:
                return outcome
        return "ok"

    def _number_code(self, phone: str, today: dt.date) -> str:
        """Ok, or the per-number code this number meets (called under the lock)."""
        c = self.config
        x = self.rng.random()
        acc = 0.0
        for code, share in sorted(c.permanent.items()):
            acc += share
            if x < acc:
                return code
        if c.daily_limit is not None and self.per_day[(phone, today)] >= c.daily_limit:
            return "LimitExceeded.PhoneNumberDailyLimit"
        return "Ok"

    # -- actions -------------------------------------------------------------------------

    def send_sms(self, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The response body and what to do after accepting (ok, 500, timeout)."""
        c = self.config
        phones = params.get("PhoneNumberSet")
        template = params.get("TemplateId")
        if not isinstance(phones, list) or not phones or not template:
            raise ApiError("MissingParameter")
        if len(phones) > MAX_NUMBERS:
            raise ApiError("LimitExceeded.PhoneNumberCountLimit")
        if c.sdk_app_id is not None and params.get("SmsSdkAppId") != c.sdk_app_id:
            raise ApiError("InvalidParameterValue.SdkAppIdNotExist")
        if c.sign_name is not None and params.get("SignName") != c.sign_name:
            raise ApiError("FailedOperation.SignatureIncorrectOrUnapproved")
        if "*" in c.unapproved_templates or str(template) in c.unapproved_templates:
            raise ApiError("FailedOperation.TemplateIncorrectOrUnapproved")
        outcome = self._roll()
        if outcome == "throttle":
            raise ApiError("RequestLimitExceeded")
        session = str(params.get("SessionContext") or "")
        values = [str(v) for v in params.get("TemplateParamSet") or []]
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        today = now.astimezone(SHANGHAI).date()
        statuses = []
        created = []
        with self.lock:
            for phone in phones:
                phone = str(phone)
                code = (
                    "InvalidParameterValue.IncorrectPhoneNumber"
                    if not (phone.startswith("+86") and len(phone) == 14 and phone[1:].isdigit())
                    else self._number_code(phone, today)
                )
                serial = ""
                if code == "Ok":
                    serial = f"2019:{self.rng.getrandbits(64):020d}"
                    final = "FAIL" if self.rng.random() < c.undelivered_share else "SUCCESS"
                    sign = str(params.get("SignName", ""))
                    sms = FakeSms(serial, phone, str(template), values, sign, session, now)
                    sms.final = final
                    self.messages[serial] = sms
                    self.order.append(serial)
                    self.per_number[phone] += 1
                    self.per_day[(phone, today)] += 1
                    created.append(sms)
                statuses.append(
                    {
                        "SerialNo": serial,
                        "PhoneNumber": phone,
                        "Fee": 1 if code == "Ok" else 0,
                        "SessionContext": session,
                        "Code": code,
                        "Message": "send success" if code == "Ok" else MESSAGES.get(code, code),
                        "IsoCode": "CN",
                    }
                )
            if c.receipt_url:
                self._to_push.extend(m.report() for m in created)
        return {"SendStatusSet": statuses}, outcome

    def pull_by_number(self, params: dict[str, Any]) -> dict[str, Any]:
        phone = params.get("PhoneNumber")
        begin = params.get("BeginTime")
        app = self.config.sdk_app_id
        if not phone or begin is None or (app is not None and params.get("SmsSdkAppId") != app):
            raise ApiError("MissingParameter")
        end = int(params.get("EndTime") or time.time() + 1)
        offset = int(params.get("Offset") or 0)
        limit = min(int(params.get("Limit") or 100), 100)
        reported_before = time.time() - self.config.report_delay
        with self.lock:
            found = [
                m
                for m in (self.messages[s] for s in self.order)
                if m.phone == phone
                and int(begin) <= m.created.timestamp() <= end
                and m.created.timestamp() <= reported_before
            ][offset : offset + limit]
        return {
            "PullSmsSendStatusSet": [
                {
                    "UserReceiveTime": int(m.created.timestamp()),
                    "CountryCode": "86",
                    "SubscriberNumber": m.phone.removeprefix("+86"),
                    "PhoneNumber": m.phone,
                    "SerialNo": m.serial,
                    "ReportStatus": m.final,
                    "Description": m.report()["description"],
                    "SessionContext": m.session,
                }
                for m in found
            ]
        }

    # -- pushes --------------------------------------------------------------------------

    def _post_json(self, url: str, body: Any) -> int:
        req = urllib.request.Request(
            url,
            data=json.dumps(body, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                answer = json.loads(resp.read() or b"{}")
                return int(resp.status) if answer.get("result") == 0 else 599
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)
        except (OSError, ValueError):
            return 0

    def post_receipts(
        self,
        url: str,
        *,
        duplicate_share: float = 0.0,
        shuffle: bool = False,
        per_post: int = 5,
        seed: int = 11,
    ) -> list[int]:
        """Post every message's status report to `url` (JSON arrays of up to `per_post`), a
        share of them twice, shuffled if asked; returns each post's HTTP code."""
        rng = random.Random(seed)
        with self.lock:
            reports = [self.messages[s].report() for s in self.order]
        reports += [r for r in list(reports) if rng.random() < duplicate_share]
        if shuffle:
            rng.shuffle(reports)
        return [
            self._post_json(url, reports[i : i + per_post])
            for i in range(0, len(reports), per_post)
        ]

    def post_reply(self, url: str, phone: str, text: str) -> int:
        """A resident's reply, pushed as Tencent pushes it."""
        body = {
            "extend": "",
            "mobile": phone.removeprefix("+86"),
            "nationcode": "86",
            "sign": self.config.sign_name or SIGN_NAME,
            "text": text,
            "time": int(time.time()),
        }
        return self._post_json(url, body)

    def _pusher(self) -> None:
        """Push queued reports to the receipt URL; what is not answered is retried."""
        while not self._stop.wait(self.config.push_interval):
            url = self.config.receipt_url
            with self.lock:
                batch, self._to_push = self._to_push[:100], self._to_push[100:]
            if not batch or not url:
                continue
            code = self._post_json(url, batch)
            with self.lock:
                self.receipt_posts[code] += 1
                if code != 200:
                    self._to_push[:0] = batch

    # -- serving -------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        fake = self

        class Handler(_Handler):
            state = fake

        self.server = _Server((host, port), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"{host}:{self.server.server_address[1]}"
        self.base_url = f"http://{self.endpoint}"
        threading.Thread(target=self.server.serve_forever, name="fake-tencent", daemon=True).start()
        threading.Thread(target=self._pusher, name="fake-tencent-push", daemon=True).start()
        return self.base_url

    def stop(self) -> None:
        self._stop.set()
        self.released.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _Server(ThreadingHTTPServer):
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed mid-answer, as the crash test does) is no error."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    state: FakeTencent

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(code)
        # Exactly this: the SDK reads an error out of the body only for this content type.
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, body: dict[str, Any]) -> None:
        self._send(200, {"Response": {**body, "RequestId": str(uuid.uuid4())}})

    def _error(self, err: ApiError) -> None:
        message = MESSAGES.get(err.code, err.code)
        self._send(
            err.http_status,
            {
                "Response": {
                    "Error": {"Code": err.code, "Message": message},
                    "RequestId": str(uuid.uuid4()),
                }
            },
        )

    def _verify(self, raw: bytes) -> None:
        """The TC3-HMAC-SHA256 signature over content-type, host and the body."""
        c = self.state.config
        auth = self.headers.get("Authorization", "")
        try:
            algorithm, rest = auth.split(" ", 1)
            parts = dict(p.strip().split("=", 1) for p in rest.split(","))
            secret_id, date, service, _ = parts["Credential"].split("/")
        except (ValueError, KeyError):
            raise ApiError("AuthFailure.SignatureFailure") from None
        if algorithm != "TC3-HMAC-SHA256" or parts.get("SignedHeaders") != "content-type;host":
            raise ApiError("AuthFailure.SignatureFailure")
        if c.secret_id is None or c.secret_key is None:
            return  # any key accepted: nothing to verify the signature against
        if secret_id != c.secret_id:
            raise ApiError("AuthFailure.SecretIdNotFound")
        canonical = (
            f"POST\n/\n\ncontent-type:{self.headers.get('Content-Type', '')}\n"
            f"host:{self.headers.get('Host', '')}\n\ncontent-type;host\n"
            f"{hashlib.sha256(raw).hexdigest()}"
        )
        timestamp = self.headers.get("X-TC-Timestamp", "")
        expected = tc3_signature(c.secret_key, date, service, timestamp, canonical)
        if not hmac.compare_digest(expected, parts.get("Signature", "")):
            raise ApiError("AuthFailure.SignatureFailure")

    def do_GET(self) -> None:
        if self.path == "/_fake/stats":
            self._send(200, self.state.stats())
            return
        self._error(ApiError("InvalidAction", 404))

    def do_POST(self) -> None:
        state = self.state
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/_fake/release":
            state.released.set()
            self._send(200, state.stats())
            return
        if self.path == "/_fake/reply":
            body = json.loads(raw or b"{}")
            url = str(body.get("url") or state.config.receipt_url or "").replace(
                "/status", "/reply"
            )
            code = state.post_reply(url, str(body["mobile"]), str(body["text"]))
            self._send(200, {"code": code})
            return
        action = self.headers.get("X-TC-Action", "")
        with state.lock:
            state.requests[action] += 1
        try:
            self._verify(raw)
            params = json.loads(raw or b"{}")
            if action == "SendSms":
                state.delay()
                body, outcome = state.send_sms(params)
                if outcome == "500":
                    self._send(500, {"message": "internal server error"})
                    return
                if outcome == "timeout":
                    time.sleep(state.config.timeout_seconds)
                state.hold()
                self._answer(body)
            elif action == "PullSmsSendStatusByPhoneNumber":
                self._answer(state.pull_by_number(params))
            else:
                raise ApiError("InvalidAction")
        except ApiError as err:
            self._error(err)


@contextmanager
def running_fake_tencent(config: FakeConfig | None = None) -> Iterator[FakeTencent]:
    fake = FakeTencent(config)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--throttle", type=float, default=0.0, help="share of calls throttled")
    parser.add_argument("--daily-limit", type=int, default=None, help="sends per number a day")
    parser.add_argument("--fail-500", type=float, default=0.0, help="share accepted, then 500")
    parser.add_argument("--timeouts", type=float, default=0.0, help="share accepted, then late")
    parser.add_argument(
        "--unapproved-template", action="append", default=[], help="a code to refuse ('*': all)"
    )
    parser.add_argument("--undelivered", type=float, default=0.0, help="share reported FAIL")
    parser.add_argument("--receipt-url", default=None, help="push status reports here")
    parser.add_argument(
        "--hold-after",
        type=int,
        default=None,
        help="after N messages, hold each further answer until POST /_fake/release",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="answer each send late")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="plus up to this much")
    parser.add_argument(
        "--secret-id", default=None, help="the only SecretId accepted (default: any)"
    )
    parser.add_argument("--secret-key", default=None, help="verify signatures with this key")
    parser.add_argument(
        "--sdk-app-id", default=None, help="the only SdkAppId accepted (default: any)"
    )
    parser.add_argument(
        "--sign-name", default=None, help="the only signature accepted (default: any)"
    )
    args = parser.parse_args()
    fake = FakeTencent(
        FakeConfig(
            secret_id=args.secret_id,
            secret_key=args.secret_key,
            sdk_app_id=args.sdk_app_id,
            sign_name=args.sign_name,
            throttle=args.throttle,
            daily_limit=args.daily_limit,
            fail_500_after_create=args.fail_500,
            timeout_after_create=args.timeouts,
            unapproved_templates=set(args.unapproved_template),
            undelivered_share=args.undelivered,
            receipt_url=args.receipt_url,
            hold_after=args.hold_after,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
        )
    )
    print(fake.start(port=args.port), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
