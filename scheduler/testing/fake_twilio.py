"""A fake Twilio REST API for tests and benchmarks, on 127.0.0.1.

It speaks the part of the API the official client uses for messages (create, fetch, list),
answers with Twilio's JSON, and can be told to fail a share of requests the ways the real one
does: 429 with Retry-After (nothing created), 500 after creating the message, a delay past
the client's timeout after creating it, and permanent error codes. It counts creations per
(To, Body), so a test can prove nothing was sent twice, and can later post signed status
callbacks, duplicated and out of order, as Twilio may.

Run in a thread (`running_fake_twilio`) or as its own process:
    python -m scheduler.testing.fake_twilio --port 8765 --fail-429 0.1
with GET /_fake/stats for its counters (and POST /_fake/release to end a --hold-after).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import email.utils
import json
import random
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from twilio.request_validator import RequestValidator

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "fake-auth-token"
ERROR_MESSAGES = {
    "20429": "Too Many Requests",
    "21211": "The 'To' number is not a valid phone number.",
    "21610": "Attempt to send to unsubscribed recipient",
    "21614": "'To' number is not a valid mobile number",
    "30006": "Landline or unreachable carrier",
}


@dataclass
class FakeConfig:
    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    fail_429: float = 0.0
    retry_after: float = 0.0
    fail_500_after_create: float = 0.0
    timeout_after_create: float = 0.0
    timeout_seconds: float = 2.0
    permanent: dict[str, float] = field(default_factory=dict)
    undelivered_share: float = 0.0
    seed: int = 7
    # After this many creations, hold every further create (after creating it) until
    # POST /_fake/release: a dispatcher is then certainly waiting on Twilio, mid-batch.
    hold_after: int | None = None
    # A real provider answers in tens of milliseconds; each create waits this long (plus a
    # uniform jitter of up to `jitter_ms`) before answering, so concurrency can be measured.
    latency_ms: float = 0.0
    jitter_ms: float = 0.0


@dataclass
class FakeMessage:
    sid: str
    to: str
    body: str
    sender: str
    status_callback: str | None
    created: dt.datetime
    status: str = "queued"
    final: str = "delivered"

    def as_json(self, account_sid: str) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "account_sid": account_sid,
            "to": self.to,
            "from": self.sender,
            "messaging_service_sid": self.sender if self.sender.startswith("MG") else None,
            "body": self.body,
            "status": self.status,
            "num_segments": "1",
            "num_media": "0",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "price": None,
            "price_unit": "USD",
            "error_code": None,
            "error_message": None,
            "date_created": email.utils.format_datetime(self.created, usegmt=True),
            "date_updated": email.utils.format_datetime(self.created, usegmt=True),
            "date_sent": None,
            "uri": f"/2010-04-01/Accounts/{account_sid}/Messages/{self.sid}.json",
            "subresource_uris": {},
        }


class FakeTwilio:
    """The fake's state; thread-safe."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.rng = random.Random(self.config.seed)
        # Its own stream, so adding latency does not change which requests fail.
        self.jitter_rng = random.Random(self.config.seed + 1)
        self.lock = threading.Lock()
        self.messages: dict[str, FakeMessage] = {}
        self.order: list[str] = []
        self.by_content: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[str] = Counter()
        self.held = 0
        self.released = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.base_url = ""

    # -- state ---------------------------------------------------------------------------

    def created_count(self) -> int:
        with self.lock:
            return len(self.messages)

    def duplicates(self) -> list[tuple[str, str]]:
        with self.lock:
            return [k for k, n in self.by_content.items() if n > 1]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "created": len(self.messages),
                "duplicates": sum(1 for n in self.by_content.values() if n > 1),
                "requests": dict(self.requests),
                "held": self.held,
            }

    def hold(self) -> None:
        """Block this request while the fake is holding (see FakeConfig.hold_after)."""
        limit = self.config.hold_after
        with self.lock:
            if limit is None or len(self.messages) <= limit or self.released.is_set():
                return
            self.held += 1
        self.released.wait(timeout=600)
        with self.lock:
            self.held -= 1

    def delay(self) -> None:
        """Sleep for the configured provider latency, jitter included."""
        c = self.config
        if c.latency_ms <= 0 and c.jitter_ms <= 0:
            return
        with self.lock:
            jitter = self.jitter_rng.random() * c.jitter_ms
        time.sleep((c.latency_ms + jitter) / 1000)

    def _roll(self) -> str:
        """What to do with one create request."""
        c = self.config
        with self.lock:
            x = self.rng.random()
        edges = [
            ("429", c.fail_429),
            ("500", c.fail_500_after_create),
            ("timeout", c.timeout_after_create),
            *((code, share) for code, share in sorted(c.permanent.items())),
        ]
        acc = 0.0
        for outcome, share in edges:
            acc += share
            if x < acc:
                return outcome
        return "ok"

    def create(self, form: dict[str, str]) -> FakeMessage:
        with self.lock:
            sid = f"SM{self.rng.getrandbits(128):032x}"
            final = (
                "undelivered" if self.rng.random() < self.config.undelivered_share else "delivered"
            )
            msg = FakeMessage(
                sid=sid,
                to=form.get("To", ""),
                body=form.get("Body", ""),
                sender=form.get("MessagingServiceSid") or form.get("From", ""),
                status_callback=form.get("StatusCallback"),
                created=dt.datetime.now(dt.UTC).replace(microsecond=0),
                final=final,
            )
            self.messages[sid] = msg
            self.order.append(sid)
            self.by_content[(msg.to, msg.body)] += 1
        return msg

    # -- callbacks -----------------------------------------------------------------------

    def post_status_callbacks(
        self,
        deliver_to: str,
        *,
        duplicate_share: float = 0.0,
        shuffle: bool = False,
        bad_signatures: int = 0,
        seed: int = 11,
    ) -> list[tuple[str, str, int]]:
        """Post sent and final statuses for every message with a callback, signed as Twilio
        signs them (over the callback URL it was given), to `deliver_to` + the URL's path: the
        proxy in front of the service. Returns (sid, status, HTTP code) per post."""
        rng = random.Random(seed)
        validator = RequestValidator(self.config.auth_token)
        posts: list[tuple[FakeMessage, str, bool]] = []
        with self.lock:
            msgs = [self.messages[s] for s in self.order if self.messages[s].status_callback]
        for m in msgs:
            posts.append((m, "sent", False))
            posts.append((m, m.final, False))
            if rng.random() < duplicate_share:
                posts.append((m, m.final, False))
        if shuffle:
            rng.shuffle(posts)
        for i in range(min(bad_signatures, len(posts))):
            m, status, _ = posts[i]
            posts[i] = (m, status, True)
        results = []
        for m, status, bad in posts:
            params = {
                "MessageSid": m.sid,
                "SmsSid": m.sid,
                "MessageStatus": status,
                "SmsStatus": status,
                "To": m.to,
                "AccountSid": self.config.account_sid,
                "ApiVersion": "2010-04-01",
            }
            if status == "undelivered":
                params["ErrorCode"] = "30003"
            assert m.status_callback is not None
            signature = validator.compute_signature(m.status_callback, params)
            if bad:
                signature = "x" + signature[1:]
            path = urllib.parse.urlsplit(m.status_callback).path
            req = urllib.request.Request(
                deliver_to.rstrip("/") + path,
                data=urllib.parse.urlencode(params).encode(),
                headers={"X-Twilio-Signature": signature},
                method="POST",
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    code = resp.status
            except urllib.error.HTTPError as exc:
                code = exc.code
                exc.close()
            results.append((m.sid, status, code))
        return results

    # -- serving -------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        fake = self

        class Handler(_Handler):
            state = fake

        self.server = _Server((host, port), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="fake-twilio", daemon=True).start()
        return self.base_url

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 resets connections when several dispatcher processes (or a
    # benchmark's client processes) connect at once.
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One segment per response, sent at once: headers and body written separately met
    # Nagle's algorithm and delayed ACKs, 40 ms per request on keep-alive connections.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    state: FakeTwilio

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, twilio_code: str, extra: dict[str, str] | None = None) -> None:
        self._send(
            code,
            {
                "code": int(twilio_code),
                "message": ERROR_MESSAGES.get(twilio_code, "Error"),
                "more_info": f"https://www.twilio.com/docs/errors/{twilio_code}",
                "status": code,
            },
            extra,
        )

    def _authorised(self) -> bool:
        c = self.state.config
        expected = base64.b64encode(f"{c.account_sid}:{c.auth_token}".encode()).decode()
        return self.headers.get("Authorization", "") == f"Basic {expected}"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        state = self.state
        if url.path == "/_fake/stats":
            self._send(200, state.stats())
            return
        if not self._authorised():
            self._error(401, "20003")
            return
        parts = url.path.strip("/").split("/")
        prefix = f"/2010-04-01/Accounts/{state.config.account_sid}/Messages"
        if url.path == prefix + ".json":
            query = urllib.parse.parse_qs(url.query)
            to = query.get("To", [None])[0]
            size = int(query.get("PageSize", ["50"])[0])
            with state.lock:
                found = [
                    state.messages[s]
                    for s in reversed(state.order)
                    if to is None or state.messages[s].to == to
                ][:size]
                body = [m.as_json(state.config.account_sid) for m in found]
            self._send(
                200,
                {
                    "messages": body,
                    "page": 0,
                    "page_size": size,
                    "first_page_uri": url.path + "?" + url.query,
                    "next_page_uri": None,
                    "previous_page_uri": None,
                    "uri": url.path + "?" + url.query,
                    "start": 0,
                    "end": max(len(body) - 1, 0),
                },
            )
            return
        if url.path.startswith(prefix + "/") and parts[-1].endswith(".json"):
            sid = parts[-1][: -len(".json")]
            with state.lock:
                msg = state.messages.get(sid)
            if msg is None:
                self._error(404, "20404")
                return
            self._send(200, msg.as_json(state.config.account_sid))
            return
        self._error(404, "20404")

    def do_POST(self) -> None:
        state = self.state
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length).decode()
        if self.path == "/_fake/release":
            state.released.set()
            self._send(200, state.stats())
            return
        state.requests["create"] += 1
        if not self._authorised():
            self._error(401, "20003")
            return
        if self.path != f"/2010-04-01/Accounts/{state.config.account_sid}/Messages.json":
            self._error(404, "20404")
            return
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
        state.delay()
        outcome = state._roll()
        state.requests[outcome] += 1
        if outcome == "429":
            self._error(429, "20429", {"Retry-After": str(state.config.retry_after)})
            return
        if outcome in ERROR_MESSAGES:
            self._error(400, outcome)
            return
        msg = state.create(form)
        if outcome == "500":
            self._error(500, "20500")
            return
        if outcome == "timeout":
            time.sleep(state.config.timeout_seconds)
        state.hold()
        self._send(201, msg.as_json(state.config.account_sid))


@contextmanager
def running_fake_twilio(config: FakeConfig | None = None) -> Iterator[FakeTwilio]:
    fake = FakeTwilio(config)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--fail-429", type=float, default=0.0)
    parser.add_argument("--fail-500", type=float, default=0.0)
    parser.add_argument("--timeouts", type=float, default=0.0)
    parser.add_argument("--permanent", type=float, default=0.0, help="share answered 21211")
    parser.add_argument(
        "--hold-after",
        type=int,
        default=None,
        help="after N creations, hold each further response until POST /_fake/release",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="answer each create this late"
    )
    parser.add_argument(
        "--jitter-ms", type=float, default=0.0, help="plus up to this much, uniformly"
    )
    args = parser.parse_args()
    fake = FakeTwilio(
        FakeConfig(
            fail_429=args.fail_429,
            fail_500_after_create=args.fail_500,
            timeout_after_create=args.timeouts,
            permanent={"21211": args.permanent} if args.permanent else {},
            hold_after=args.hold_after,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
        )
    )
    url = fake.start(port=args.port)
    print(url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
