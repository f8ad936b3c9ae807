"""Console accounts: the use cases the `pingan users` commands and the console's login share.

Passwords are hashed with Argon2id (argon2-cffi's defaults, re-hashed at login when those
change). Failed logins are stored in the database, so the throttle holds across processes and
restarts. Every account change is written to the audit log in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import difflib
import enum
import functools
import re
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from scheduler.core import Core
from scheduler.exceptions import PingAnError, UnknownName
from scheduler.models import Role
from scheduler.store import users as store
from scheduler.store.users import AuditRecord, StoredUser

PASSWORD_MIN_LENGTH = 8
_NAME = re.compile(r"^[\w.@-]{1,64}$")
_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password.


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against for an unknown name, so it costs as long as a wrong password.

    Made on first use, not at import: every `pingan` command imports this module, and an
    Argon2 hash is a deliberate fraction of a second.
    """
    return _hasher.hash("not-a-password-anyone-has")


class AccountError(PingAnError):
    """The account change is not possible."""


class NameTaken(AccountError):
    """A user with this name already exists."""


class UnknownUser(UnknownName):
    """No such user."""


class BadPassword(AccountError):
    """The password is not acceptable."""


ROLE_LABELS: dict[Role, str] = {
    Role.VIEWER: "查看员",
    Role.OPERATOR: "操作员",
    Role.APPROVER: "审核员",
    Role.ADMIN: "管理员",
}


@dataclass(frozen=True)
class Account:
    """A user as the CLI and the console show it: never the password hash."""

    id: int
    name: str
    role: Role
    town_id: str | None
    town_name: str | None
    active: bool
    session_epoch: int
    created_at: dt.datetime
    last_login_at: dt.datetime | None

    @property
    def role_label(self) -> str:
        return ROLE_LABELS[self.role]

    def allows(self, needed: Role) -> bool:
        return self.role.allows(needed)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": str(self.role),
            "town": self.town_id,
            "town_name": self.town_name,
            "active": self.active,
            "created_at": self.created_at.isoformat(),
            "last_login_at": self.last_login_at.isoformat() if self.last_login_at else None,
        }


class LoginOutcome(enum.StrEnum):
    OK = "ok"
    BAD_CREDENTIALS = "bad_credentials"
    DISABLED = "disabled"
    THROTTLED = "throttled"


@dataclass(frozen=True)
class LoginResult:
    outcome: LoginOutcome
    account: Account | None = None
    retry_after_seconds: int = 0


def _account(core: Core, user: StoredUser) -> Account:
    town = core.district.towns_by_id.get(user.town_id) if user.town_id else None
    return Account(
        id=user.id,
        name=user.name,
        role=user.role,
        town_id=user.town_id,
        town_name=town.name if town else None,
        active=user.active,
        session_epoch=user.session_epoch,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
    )


def _check_password(password: str) -> None:
    if len(password) < PASSWORD_MIN_LENGTH:
        raise BadPassword(f"the password must have at least {PASSWORD_MIN_LENGTH} characters")
    if password != password.strip():
        raise BadPassword("the password must not start or end with spaces")


def resolve_town(core: Core, key: str) -> str:
    """A town id from an id or name of the district, or an error suggesting the closest."""
    try:
        return core.district.find_town(key).id
    except UnknownName:
        known = [t.id for t in core.district.towns] + [t.name for t in core.district.towns]
        close = difflib.get_close_matches(key.strip(), known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        ids = ", ".join(t.id for t in core.district.towns)
        raise UnknownName(
            f"unknown town {key!r}{hint} (towns of {core.district.district.name}: {ids})"
        ) from None


def create_user(
    core: Core,
    name: str,
    role: Role,
    password: str,
    *,
    town: str | None = None,
    actor: str = "cli",
    peer: str | None = None,
) -> Account:
    """Add an account; a town makes it town-scoped. Raises NameTaken, BadPassword, UnknownName."""
    name = name.strip()
    if not _NAME.match(name):
        raise AccountError(
            f"invalid user name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-'"
        )
    town_id = resolve_town(core, town) if town else None
    if town_id and role == Role.ADMIN:
        raise AccountError("an admin manages the whole district; --town is for other roles")
    _check_password(password)
    now = core.clock()
    user = store.insert_user(
        core.engine,
        name=name,
        role=role,
        town_id=town_id,
        password_hash=_hasher.hash(password),
        now=now,
        audit=AuditRecord(
            at=now,
            actor=actor,
            action="user.add",
            subject=name,
            detail=f"角色：{ROLE_LABELS[role]}"
            + (f"，镇（街道）：{core.district.towns_by_id[town_id].name}" if town_id else ""),
            peer=peer,
        ),
    )
    if user is None:
        raise NameTaken(f"a user named {name!r} already exists")
    return _account(core, user)


def list_users(core: Core) -> list[Account]:
    return [_account(core, u) for u in store.list_users(core.engine)]


def get_user(core: Core, name: str) -> Account:
    user = store.get_user(core.engine, name)
    if user is None:
        raise UnknownUser(f"no user named {name!r}")
    return _account(core, user)


def disable_user(core: Core, name: str, *, actor: str = "cli", peer: str | None = None) -> Account:
    """Refuse the user's logins from now on and end the sessions already open."""
    now = core.clock()
    user = store.update_user(
        core.engine,
        name,
        now=now,
        active=False,
        end_sessions=True,
        audit=AuditRecord(at=now, actor=actor, action="user.disable", subject=name, peer=peer),
    )
    if user is None:
        raise UnknownUser(f"no user named {name!r}")
    return _account(core, user)


def set_password(
    core: Core, name: str, password: str, *, actor: str = "cli", peer: str | None = None
) -> Account:
    """A new password; the user's open sessions end, so a leaked one stops working too."""
    _check_password(password)
    now = core.clock()
    user = store.update_user(
        core.engine,
        name,
        now=now,
        password_hash=_hasher.hash(password),
        end_sessions=True,
        audit=AuditRecord(at=now, actor=actor, action="user.password", subject=name, peer=peer),
    )
    if user is None:
        raise UnknownUser(f"no user named {name!r}")
    return _account(core, user)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def authenticate(core: Core, name: str, password: str, *, peer: str) -> LoginResult:
    """Check a login. After `login_max_failures` failures for this name from this address
    within the window, or `login_max_failures_per_address` for any names from it (password
    spraying), every attempt is refused as THROTTLED until the oldest one ages out, without
    looking at the password."""
    settings = core.settings.console
    name = name.strip()[:64]
    now = core.clock()
    window = dt.timedelta(minutes=settings.login_window_minutes)
    for who, limit in (
        (name, settings.login_max_failures),
        (None, settings.login_max_failures_per_address),
    ):
        failures, oldest = store.recent_failures(core.engine, who, peer, now - window)
        if failures >= limit:
            wait = (oldest + window - now).total_seconds() if oldest else window.total_seconds()
            return LoginResult(LoginOutcome.THROTTLED, retry_after_seconds=max(1, int(wait) + 1))
    user = store.get_user(core.engine, name) if name else None
    if user is None or not _verify(user.password_hash, password):
        if user is None:
            _verify(_dummy_hash(), password)
        store.add_failure(core.engine, name, peer, at=now, forget_before=now - window)
        return LoginResult(LoginOutcome.BAD_CREDENTIALS)
    if not user.active:
        return LoginResult(LoginOutcome.DISABLED)
    new_hash = _hasher.hash(password) if _hasher.check_needs_rehash(user.password_hash) else None
    store.record_login(
        core.engine,
        user.id,
        now=now,
        username=name,
        peer=peer,
        new_hash=new_hash,
        audit=AuditRecord(at=now, actor=name, action="user.login", subject=name, peer=peer),
    )
    return LoginResult(LoginOutcome.OK, _account(core, user))


def session_account(core: Core, user_id: int, epoch: int) -> Account | None:
    """The account a session belongs to, or None when it was disabled or its password changed
    since the session began."""
    user = store.get_user_by_id(core.engine, user_id)
    if user is None or not user.active or user.session_epoch != epoch:
        return None
    return _account(core, user)


def record_audit(
    core: Core,
    actor: str,
    action: str,
    subject: str = "",
    detail: str = "",
    peer: str | None = None,
) -> None:
    store.add_audit(
        core.engine,
        AuditRecord(
            at=core.clock(), actor=actor, action=action, subject=subject, detail=detail, peer=peer
        ),
    )


def audit_entries(core: Core, *, limit: int = 200, offset: int = 0) -> list[AuditRecord]:
    return store.list_audit(core.engine, limit=limit, offset=offset)
