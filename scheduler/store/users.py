"""Console accounts, failed logins and the audit log: the SQL behind `scheduler.accounts`.

An account change and its audit row are written in one transaction, so the log never misses a
change that happened nor records one that did not.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from scheduler.db import transaction
from scheduler.models import AuditEntry, LoginFailure, Role, User


@dataclass(frozen=True)
class StoredUser:
    id: int
    name: str
    role: Role
    town_id: str | None
    password_hash: str
    active: bool
    session_epoch: int
    created_at: dt.datetime
    last_login_at: dt.datetime | None


@dataclass(frozen=True)
class AuditRecord:
    """One audit row; `id` is 0 until stored."""

    at: dt.datetime
    actor: str
    action: str
    subject: str = ""
    detail: str = ""
    peer: str | None = None
    id: int = 0


def _user(row: User) -> StoredUser:
    return StoredUser(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        town_id=row.town_id,
        password_hash=row.password_hash,
        active=row.active,
        session_epoch=row.session_epoch,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
    )


def add_audit_row(s: Session, record: AuditRecord | None) -> None:
    """The audit row inside the caller's transaction, beside the change it records."""
    if record is not None:
        s.add(
            AuditEntry(
                at=record.at,
                actor=record.actor,
                action=record.action,
                subject=record.subject,
                detail=record.detail,
                peer=record.peer,
            )
        )


def insert_user(
    engine: Engine,
    *,
    name: str,
    role: Role,
    town_id: str | None,
    password_hash: str,
    now: dt.datetime,
    audit: AuditRecord | None = None,
) -> StoredUser | None:
    """The new user, or None when the name is taken (also when another process took it first)."""
    try:
        with transaction(engine) as s:
            if s.scalar(select(User.id).where(User.name == name)) is not None:
                return None
            row = User(
                name=name,
                role=role,
                town_id=town_id,
                password_hash=password_hash,
                active=True,
                session_epoch=0,
                created_at=now,
                updated_at=now,
                last_login_at=None,
            )
            s.add(row)
            add_audit_row(s, audit)
            s.flush()
            return _user(row)
    except IntegrityError:
        return None


def get_user(engine: Engine, name: str) -> StoredUser | None:
    with Session(engine) as s:
        row = s.scalar(select(User).where(User.name == name))
        return _user(row) if row else None


def get_user_by_id(engine: Engine, user_id: int) -> StoredUser | None:
    with Session(engine) as s:
        row = s.get(User, user_id)
        return _user(row) if row else None


def list_users(engine: Engine) -> list[StoredUser]:
    with Session(engine) as s:
        return [_user(r) for r in s.scalars(select(User).order_by(User.name))]


def update_user(
    engine: Engine,
    name: str,
    *,
    now: dt.datetime,
    password_hash: str | None = None,
    active: bool | None = None,
    end_sessions: bool = False,
    audit: AuditRecord | None = None,
) -> StoredUser | None:
    """Change a user's password hash or active flag; None when there is no such user.

    `end_sessions` bumps the session epoch, which signs every open session of the user out.
    """
    with transaction(engine) as s:
        row = s.scalar(select(User).where(User.name == name).with_for_update())
        if row is None:
            return None
        if password_hash is not None:
            row.password_hash = password_hash
        if active is not None:
            row.active = active
        if end_sessions:
            row.session_epoch = row.session_epoch + 1
        row.updated_at = now
        add_audit_row(s, audit)
        s.flush()
        return _user(row)


def record_login(
    engine: Engine,
    user_id: int,
    *,
    now: dt.datetime,
    username: str,
    peer: str,
    new_hash: str | None = None,
    audit: AuditRecord | None = None,
) -> None:
    """A successful login: its time, a re-hash if the parameters changed, failures forgiven."""
    with transaction(engine) as s:
        values: dict[str, object] = {"last_login_at": now}
        if new_hash is not None:
            values["password_hash"] = new_hash
        s.execute(update(User).where(User.id == user_id).values(**values))
        s.execute(
            delete(LoginFailure).where(LoginFailure.username == username, LoginFailure.peer == peer)
        )
        add_audit_row(s, audit)


def recent_failures(
    engine: Engine, username: str | None, peer: str, since: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """(failed logins for this name — or, with None, any name — from this address since
    `since`, the oldest of them)."""
    where = [LoginFailure.peer == peer, LoginFailure.at >= since]
    if username is not None:
        where.append(LoginFailure.username == username)
    with Session(engine) as s:
        count, oldest = s.execute(
            select(func.count(), func.min(LoginFailure.at)).where(*where)
        ).one()
        if isinstance(oldest, str):  # an aggregate skips the column type on SQLite
            oldest = dt.datetime.fromisoformat(oldest).replace(tzinfo=dt.UTC)
        elif oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.UTC)
        return int(count), oldest


def add_failure(
    engine: Engine, username: str, peer: str, *, at: dt.datetime, forget_before: dt.datetime
) -> None:
    """Record a failed login; failures older than the throttle window are dropped on the way."""
    with transaction(engine) as s:
        s.execute(delete(LoginFailure).where(LoginFailure.at < forget_before))
        s.add(LoginFailure(at=at, username=username, peer=peer))


def add_audit(engine: Engine, record: AuditRecord) -> None:
    with transaction(engine) as s:
        add_audit_row(s, record)


def list_audit(engine: Engine, *, limit: int = 200, offset: int = 0) -> list[AuditRecord]:
    """The newest entries first."""
    with Session(engine) as s:
        rows = s.scalars(
            select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
        )
        return [
            AuditRecord(
                id=r.id,
                at=r.at,
                actor=r.actor,
                action=r.action,
                subject=r.subject,
                detail=r.detail,
                peer=r.peer,
            )
            for r in rows
        ]
