"""SQLAlchemy models: the whole schema, one table per concept. Alembic migrations follow these."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite has no BIGINT autoincrement; INTEGER PRIMARY KEY is its 64-bit rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware datetimes in, aware UTC out; stored as UTC so SQLite and PostgreSQL agree.

    On SQLite the value is ISO text written in one step (it sorts as time does); going through
    SQLAlchemy's own SQLite DATETIME processing doubled the cost of bulk writes.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(26))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        utc = value.astimezone(dt.UTC).replace(tzinfo=None)
        return utc.isoformat(" ", "microseconds") if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class OccurrenceState(enum.StrEnum):
    EXPANDING = "expanding"
    READY = "ready"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


class MessageState(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings (no native enum type) so adding a state needs no type migration.
    return Enum(cls, name=name, native_enum=False, length=16, values_callable=_values)


def _values(cls: type[enum.Enum]) -> list[str]:
    return [str(m.value) for m in cls]


class Recipient(Base):
    __tablename__ = "recipients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    phone: Mapped[str] = mapped_column(String(11), unique=True)
    name: Mapped[str | None] = mapped_column(String(64))
    town_id: Mapped[str] = mapped_column(String(64))
    village_id: Mapped[str] = mapped_column(String(64))
    household: Mapped[str | None] = mapped_column(String(64))
    carrier: Mapped[str] = mapped_column(String(16))
    residence: Mapped[str | None] = mapped_column(String(16))
    # ';'-joined, with leading and trailing ';' so `LIKE '%;student;%'` finds a segment.
    segments: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_recipients_town_village", "town_id", "village_id"),
        # One town's residents in id order without a sort: top-ups page through them.
        Index("ix_recipients_town_id", "town_id", "id"),
    )


class OptOut(Base):
    """Residents who refused messages; kept whatever later imports say."""

    __tablename__ = "opt_outs"

    phone: Mapped[str] = mapped_column(String(11), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(255))
    # The resident's reply as received, when the refusal came by SMS.
    reply_text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Occurrence(Base):
    """One firing of a campaign at one scheduled time; the key forbids firing it twice."""

    __tablename__ = "occurrences"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign: Mapped[str] = mapped_column(String(128))
    scheduled_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16), default="scheduled")
    # For alert and top-up occurrences: the village or town aimed at, and the size asked for.
    target: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    channel: Mapped[str] = mapped_column(String(8), default="sms")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[OccurrenceState] = mapped_column(
        _enum(OccurrenceState, "occurrence_state"), default=OccurrenceState.EXPANDING
    )
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    queued: Mapped[int] = mapped_column(Integer, default=0)
    excluded: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # The last recipient id written, so a killed expansion resumes after it.
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expanded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("campaign", "scheduled_at"),)


class MessageBody(Base):
    """A rendered text shared by every message that carries it (once per town, say)."""

    __tablename__ = "message_bodies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str] = mapped_column(Text)
    template_name: Mapped[str] = mapped_column(String(128))
    template_hash: Mapped[str] = mapped_column(String(64))
    chars: Mapped[int] = mapped_column(Integer)
    segments: Mapped[int] = mapped_column(Integer)
    # A template-code gateway's parameters, JSON by gateway: {"aliyun": {"town": "…"}, …}.
    params: Mapped[str | None] = mapped_column(Text)


class Message(Base):
    """One message to one resident. On PostgreSQL partitioned by `period`, its primary key
    (id, period) (migration 0014); `id` alone stays the key here so SQLite keeps its rowid."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    occurrence_id: Mapped[int] = mapped_column(ForeignKey("occurrences.id"))
    recipient_id: Mapped[int] = mapped_column(BigInteger)
    phone: Mapped[str] = mapped_column(String(11))
    town_id: Mapped[str] = mapped_column(String(64))
    village_id: Mapped[str] = mapped_column(String(64))
    carrier: Mapped[str] = mapped_column(String(16))
    body_id: Mapped[int] = mapped_column(ForeignKey("message_bodies.id"))
    segments: Mapped[int] = mapped_column(Integer)
    # Minus the campaign's priority, so one ascending index serves the claim order.
    rank: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[MessageState] = mapped_column(
        _enum(MessageState, "message_state"), default=MessageState.QUEUED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    provider: Mapped[str | None] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64))
    queued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # When the message went to the provider; its local day is the day quotas count it on.
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    status_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The first day of the occurrence's local month (`store.retention.period_of`): the
    # partition key on PostgreSQL, where every unique key must include it. Being a function
    # of the occurrence, the key below is exactly as strict as (occurrence_id, recipient_id).
    period: Mapped[dt.date] = mapped_column(Date)

    __table_args__ = (
        UniqueConstraint("occurrence_id", "recipient_id", "period"),
        # The dispatcher's claim: queued messages, highest priority first, then oldest.
        Index("ix_messages_claim", "state", "rank", "id"),
        Index("ix_messages_recipient_queued", "recipient_id", "queued_at"),
        Index("ix_messages_provider_message_id", "provider_message_id"),
        Index("ix_messages_sent_town", "sent_at", "town_id"),
    )


class Attempt(Base):
    """Every call to a provider, whatever came of it.

    On PostgreSQL partitioned by month of `attempted_at`, its primary key (id, attempted_at)
    (migration 0014); `id` alone stays the key here so SQLite keeps its rowid."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(BigInteger, index=True)
    attempted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


class PendingStatus(Base):
    """A status callback that arrived before its message's send was recorded; applied then."""

    __tablename__ = "pending_statuses"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider_message_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class SendCounter(Base):
    """Messages sent and delivered per local day, town, village and carrier.

    Updated in the same transaction as the message, so quota queries sum a few thousand rows
    instead of scanning millions of messages.
    """

    __tablename__ = "send_counters"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    town_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    village_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    carrier: Mapped[str] = mapped_column(String(16), primary_key=True)
    sent: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)


class TownDayCounter(Base):
    """`send_counters` summed over villages and carriers: one row per local day and town.

    Kept by `bump_counters` in the same transaction as the fine rows, so a week of 1,000 towns
    is 7,000 rows to sum instead of 63,000. WITHOUT ROWID on SQLite: the rows are stored in
    primary-key order, so a window is one contiguous range read.
    """

    __tablename__ = "send_counters_town"
    __table_args__ = ({"sqlite_with_rowid": False},)

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    town_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sent: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)


class CarrierDayCounter(Base):
    """`send_counters` summed over towns and villages: one row per local day and carrier."""

    __tablename__ = "send_counters_carrier"
    __table_args__ = ({"sqlite_with_rowid": False},)

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    carrier: Mapped[str] = mapped_column(String(16), primary_key=True)
    sent: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)


class FraudCase(Base):
    __tablename__ = "fraud_cases"

    case_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Yuan with fen: 99,999.50 is below the 100,000-yuan rule, not rounded up into it.
    amount_yuan: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    fraud_type: Mapped[str] = mapped_column(String(64))
    place: Mapped[str | None] = mapped_column(String(255))
    town_id: Mapped[str] = mapped_column(String(64))
    village_id: Mapped[str] = mapped_column(String(64))
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ReportedSend(Base):
    """Sends a carrier or town made on its own and reported to the office (`pingan sends
    import`): one row per source, subject and day or ISO week; re-importing updates it."""

    __tablename__ = "reported_sends"

    source_kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # carrier | town
    source_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # carrier|town|village
    subject_key: Mapped[str] = mapped_column(String(140), primary_key=True)
    period: Mapped[str] = mapped_column(String(10), primary_key=True)  # 2022-10-12 | 2022-W41
    town_id: Mapped[str] = mapped_column(String(64), default="")
    village_id: Mapped[str] = mapped_column(String(64), default="")
    carrier: Mapped[str] = mapped_column(String(16), default="")
    first_day: Mapped[dt.date] = mapped_column(Date)
    last_day: Mapped[dt.date] = mapped_column(Date)
    messages_sent: Mapped[int] = mapped_column(BigInteger)
    people_reached: Mapped[int | None] = mapped_column(BigInteger)
    note: Mapped[str] = mapped_column(Text, default="")
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_reported_sends_last_day", "last_day"),)


class SchedulerLock(Base):
    """On SQLite, the row that makes one `pingan run` the active scheduler."""

    __tablename__ = "scheduler_lock"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Activity(Base):
    """The monthly report's manual columns, per town and month (YYYY-MM)."""

    __tablename__ = "activities"

    town_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    households_visited: Mapped[int] = mapped_column(Integer, default=0)
    leaflets: Mapped[int] = mapped_column(Integer, default=0)
    banners: Mapped[int] = mapped_column(Integer, default=0)
    boards: Mapped[int] = mapped_column(Integer, default=0)
    wechat_posts: Mapped[int] = mapped_column(Integer, default=0)
    questionnaires: Mapped[int] = mapped_column(Integer, default=0)
    volunteer_activities: Mapped[int] = mapped_column(Integer, default=0)
    other: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class FiledReport(Base):
    """A monthly report once filed: its activities can no longer be edited."""

    __tablename__ = "filed_reports"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    filed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    path: Mapped[str] = mapped_column(Text)


# --- Console accounts (issue 13): users, login throttle, audit log ---------------------------


class Role(enum.StrEnum):
    """Console roles, each allowed what the ones before it are: viewer < operator < approver <
    admin."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class User(Base):
    """A console account; `town_id` set means the user sees and acts on that town only."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role, "user_role"))
    town_id: Mapped[str | None] = mapped_column(String(64))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Bumped on a password change or disable: sessions signed with an older value end.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class LoginFailure(Base):
    """Failed console logins, kept for the throttle window so every process sees them."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    username: Mapped[str] = mapped_column(String(64))
    peer: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_login_failures_username_peer_at", "username", "peer", "at"),)


class AuditEntry(Base):
    """Who changed what, when: every change made through the console or to accounts."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    peer: Mapped[str | None] = mapped_column(String(64))


class TemplateRevision(Base):
    """Every text of a template saved through the console, with who saved it: the history an
    approver reads, and the approved text a diff is made against (approvals.yaml keeps only
    its hash)."""

    __tablename__ = "template_revisions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    source_hash: Mapped[str] = mapped_column(String(64))
    content: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_template_revisions_name_id", "name", "id"),)


class RateSlot(Base):
    """How much of one rate limit (overall messages, or one carrier's segments) dispatchers
    have taken in one wall-clock second: the limits hold across dispatcher processes because
    every one of them reserves here (scheduler.ratelimit). Rows older than a minute are
    deleted as new ones are taken."""

    __tablename__ = "rate_slots"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    second: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # Unix time, whole seconds
    taken: Mapped[int] = mapped_column(BigInteger)
