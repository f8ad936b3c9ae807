"""The one settings object: environment (PINGAN_*, nested with __), then `.env`, then defaults."""

from __future__ import annotations

import datetime as dt
import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scheduler.exceptions import SettingsError


class TwilioSettings(BaseModel):
    account_sid: str = ""
    auth_token: SecretStr = SecretStr("")
    messaging_service_sid: str = ""
    from_number: str = ""
    # Tests and benchmarks only: point the official client at a fake server on 127.0.0.1.
    base_url: str = ""
    timeout_seconds: float = 10.0


class PushGatewaySettings(BaseModel):
    """What a gateway with unsigned receipt and reply pushes needs to trust them
    (scheduler.providers.webhook_guard)."""

    # The pushes are unsigned: they must carry this token (query `token=`), else 403/503.
    webhook_token: SecretStr = SecretStr("")
    # Addresses or networks (CIDR) allowed to push; empty: any.
    webhook_allow_ips: list[str] = Field(default_factory=list)

    @field_validator("webhook_allow_ips")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an address or network (CIDR)") from exc
        return [item.strip() for item in value]


class AliyunSettings(PushGatewaySettings):
    """Alibaba Cloud SMS (issue 14): an AccessKey, the approved signature name (签名, without
    【】) and, for tests, the fake's endpoint over http. Receipts and replies are pushed to
    /webhooks/aliyun/status and /webhooks/aliyun/inbound with `?token=WEBHOOK_TOKEN`."""

    access_key_id: str = ""
    access_key_secret: SecretStr = SecretStr("")
    sign_name: str = ""
    # host[:port] of the SMS API.
    endpoint: str = "dysmsapi.aliyuncs.com"
    protocol: Literal["https", "http"] = "https"
    timeout_seconds: float = Field(10.0, gt=0)
    # Numbers per SendBatchSms call (the API takes at most 100).
    batch_size: int = Field(100, ge=1, le=100)


class DryRunSettings(BaseModel):
    """The dry-run provider logs JSON lines and simulates delivery: nothing needs an account."""

    log_file: Path | None = None
    # The log is the dry-run provider's record of what it "sent" (reconciliation after a crash
    # reads it); the simulator, which throws its scratch folder away, turns it off.
    write_log: bool = True
    show_numbers: bool = False
    delivered_share: float = Field(0.97, ge=0, le=1)
    undelivered_share: float = Field(0.02, ge=0, le=1)
    failed_share: float = Field(0.01, ge=0, le=1)
    # Per-carrier overrides of delivered_share, e.g. {"unicom": 0.9}.
    delivered_share_by_carrier: dict[str, float] = Field(default_factory=dict)
    seed: int | None = None
    # Hold the dry-run provider to PINGAN_DISPATCH__RATE_PER_SECOND and the per-carrier
    # segment rates, as a real provider would be (a rehearsal of the pacing); off by default.
    rate_limited: bool = False


class TencentSettings(PushGatewaySettings):
    """Tencent Cloud SMS (issue 14): an API key pair, the SMS application (SdkAppId), its
    approved signature name (签名, without 【】) and, for tests, the fake's endpoint over http.
    Receipts and replies are pushed to /webhooks/tencent/status and /webhooks/tencent/reply
    with `?token=WEBHOOK_TOKEN`."""

    secret_id: str = ""
    secret_key: SecretStr = SecretStr("")
    sdk_app_id: str = ""
    sign_name: str = ""
    # host[:port] of the SMS API.
    endpoint: str = "sms.tencentcloudapi.com"
    protocol: Literal["https", "http"] = "https"
    region: str = "ap-guangzhou"
    timeout_seconds: float = Field(10.0, gt=0)
    # A look-up sees a message only once its carrier report exists: one that finds nothing
    # pulls again until this long after the send before concluding it was never sent.
    report_wait_seconds: float = Field(60.0, ge=0)


class DispatchSettings(BaseModel):
    batch_size: int = Field(500, ge=1)
    concurrency: int = Field(16, ge=1)
    rate_per_second: float = Field(1000.0, gt=0)
    # Per-carrier segment rate limits, e.g. {"mobile": 100}; carriers not named are unlimited.
    segment_rate_by_carrier: dict[str, float] = Field(default_factory=dict)
    max_attempts: int = Field(5, ge=1)
    backoff_base_seconds: float = Field(2.0, ge=0)
    backoff_max_seconds: float = Field(300.0, ge=0)
    poll_seconds: float = Field(2.0, ge=0)
    # A message `sending` for longer than this was left by a crash and is reconciled.
    stale_sending_seconds: float = Field(300.0, ge=0)
    # A status callback kept for a message id that never appears is dropped after this long.
    pending_status_days: float = Field(7.0, gt=0)
    # Dispatcher processes (`pingan dispatch --workers`, the service's own dispatcher); the
    # rate limits hold across them (rate_slots). More than one needs PostgreSQL.
    workers: int = Field(1, ge=1)
    # Every N minutes the service asks the provider about messages still `sent` N minutes
    # after sending (a push that never reached an intranet), at most `receipt_pull_batch` a
    # time; 0 turns the pull off (pushes only).
    receipt_pull_minutes: float = Field(10.0, ge=0)
    receipt_pull_batch: int = Field(2000, ge=1)


class AlertSettings(BaseModel):
    """The must-reach rules of the case seed (三必讲)."""

    single_loss_yuan: int = 100_000
    case_count: int = 3
    # At most one alert per village in this many days.
    period_days: int = 7
    # The ≥3-cases rule counts cases in the N days up to the newest case (seed 003's "今年以来"
    # read as a rolling period, so it does not reset on 1 January); the ≥100,000 rule has no
    # period: each new case is judged on its own amount.
    case_count_days: int = Field(365, ge=1)
    # The 倒查 check-back: was the victim's village reached in the N days before the case?
    checkback_days: int = Field(30, ge=1)


class ConsoleSettings(BaseModel):
    """The web console (issue 13): its session cookie and login throttle."""

    # Signs the session cookie. Empty: generated once into <data_dir>/console-secret.key.
    secret_key: SecretStr = SecretStr("")
    # A session ends this long after its last request.
    session_hours: float = Field(8.0, gt=0)
    # Send the cookie over HTTPS only; turn on behind a TLS-terminating proxy.
    cookie_secure: bool = False
    # This many failed logins for one user name from one address within the window → 429.
    login_max_failures: int = Field(5, ge=1)
    # This many failed logins from one address within the window, whatever the names tried
    # (password spraying across accounts) → 429 for every name from that address.
    login_max_failures_per_address: int = Field(20, ge=1)
    login_window_minutes: float = Field(15.0, gt=0)


class RetentionSettings(BaseModel):
    """Monthly partitions and retention of messages and attempts (`pingan db prune`)."""

    # Full months kept before the current one; older months are archived to
    # <data dir>/archive/ and dropped by the service's daily job. 0 keeps everything.
    months: int = Field(0, ge=0)
    # Months of partitions the daily job keeps created ahead of the current one (PostgreSQL).
    partitions_ahead: int = Field(3, ge=1, le=24)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PINGAN_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path = Path("var")
    database_url: str = ""
    # SQLite's PRAGMA synchronous. `normal` (WAL) survives a crashed process; `full` also a
    # power cut, at one fsync per commit; `off` is for scratch databases (the simulator's).
    sqlite_synchronous: Literal["off", "normal", "full"] = "normal"
    config_dir: Path = Path("config")
    templates_dir: Path = Path("templates/messages")
    reports_dir: Path | None = None
    timezone: str = "Asia/Shanghai"
    # A name in scheduler.providers.registry (dryrun, twilio, …).
    provider: str = "dryrun"
    log_format: Literal["auto", "pretty", "json"] = "auto"
    log_level: str = "INFO"

    sending_hours: str = "08:00-20:00"
    weekly_cap: int = Field(2, ge=0)
    max_sms_segments: int = Field(2, ge=1)
    misfire_grace_hours: float = Field(24.0, ge=0)
    report_due_day: int = Field(25, ge=1, le=28)
    # -- counting and the monthly report (issue 11) --
    # Which month the due-day job reports: `current` (seed 001: the 25th, this month) or
    # `previous` (seed 002: the 3rd, last month).
    report_period: Literal["current", "previous"] = "current"
    quota_check: str = "thu 10:00"

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    public_base_url: str = "http://127.0.0.1:8080"
    # -- HTTP API callers (issue 10) --
    # Named bearer tokens for the operator API (/api/...), `name=token,name2=token2`; the name
    # is what the audit log records. PINGAN_API_TOKEN is one more token, named `default`.
    # With none, only loopback peers without a forwarding header may call the API.
    api_tokens: SecretStr = SecretStr("")
    api_token: SecretStr = SecretStr("")
    opt_out_keywords: list[str] = Field(
        default_factory=lambda: ["退订", "TD", "T", "R", "STOP", "UNSUBSCRIBE", "取消", "拒收"]
    )

    twilio: TwilioSettings = Field(default_factory=TwilioSettings)
    aliyun: AliyunSettings = Field(default_factory=AliyunSettings)
    dryrun: DryRunSettings = Field(default_factory=DryRunSettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    tencent: TencentSettings = Field(default_factory=TencentSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("provider")
    @classmethod
    def _registered_provider(cls, value: str) -> str:
        from scheduler.providers.registry import names

        if value not in names():
            raise ValueError(f"unknown provider {value!r} (known: {', '.join(names())})")
        return value

    @field_validator("sending_hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        parse_hours(value)
        return value

    @field_validator("api_tokens")
    @classmethod
    def _named_tokens(cls, value: SecretStr) -> SecretStr:
        names: set[str] = set()
        for pair in value.get_secret_value().split(","):
            if not pair.strip():
                continue
            name, sep, token = pair.partition("=")
            name, token = name.strip(), token.strip()
            if not sep or not name or not token:
                raise ValueError("give name=token pairs separated by commas")
            if not token.isascii() or not token.isprintable() or " " in token:
                raise ValueError(f"the token named {name!r} must be printable ASCII, no spaces")
            if len(name) > 64 or name in names:
                raise ValueError(f"token name {name[:64]!r} is repeated or longer than 64")
            names.add(name)
        return value

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def allowed_hours(self) -> tuple[dt.time, dt.time]:
        return parse_hours(self.sending_hours)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pingan.db').as_posix()}"

    @property
    def effective_reports_dir(self) -> Path:
        return self.reports_dir or self.data_dir / "reports"

    @property
    def dryrun_log_file(self) -> Path:
        return self.dryrun.log_file or self.data_dir / "dryrun-sent.jsonl"

    def api_callers(self) -> dict[str, str]:
        """Token name by token, from PINGAN_API_TOKENS and PINGAN_API_TOKEN (named `default`)."""
        callers: dict[str, str] = {}
        for pair in self.api_tokens.get_secret_value().split(","):
            if pair.strip():
                name, _, token = pair.partition("=")
                callers[token.strip()] = name.strip()
        single = self.api_token.get_secret_value().strip()
        if single:
            callers[single] = "default"
        return callers

    def public_view(self) -> dict[str, Any]:
        """The effective settings with secrets hidden, for `pingan settings`."""
        data = self.model_dump(mode="json")
        data["effective_database_url"] = _hide_password(self.effective_database_url)
        data["database_url"] = _hide_password(self.database_url)
        return data


def parse_hours(value: str) -> tuple[dt.time, dt.time]:
    try:
        start_s, end_s = value.split("-")
        start = dt.time.fromisoformat(start_s.strip())
        end = dt.time.fromisoformat(end_s.strip())
    except ValueError as exc:
        raise ValueError(f"sending hours must look like 08:00-20:00, got {value!r}") from exc
    if not start < end:
        raise ValueError(f"sending hours must start before they end, got {value!r}")
    return start, end


def _hide_password(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def load_settings(**overrides: Any) -> Settings:
    """Build and validate settings at start-up, turning pydantic errors into one clear message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"PINGAN_{'__'.join(str(p).upper() for p in err['loc'])}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from exc
