"""`pingan users` end to end in subprocesses, and the accounts use cases behind it."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler import accounts
from scheduler.accounts import LoginOutcome
from scheduler.core import Core
from scheduler.models import AuditEntry, Role, User
from scheduler.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def pingan(
    tmp_path: Path, *args: str, stdin: str = "", ok: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(PINGAN_DATA_DIR=str(tmp_path / "var"), PINGAN_LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def users_json(tmp_path: Path) -> list[dict[str, Any]]:
    data = json.loads(pingan(tmp_path, "users", "list", "--format", "json").stdout)
    assert isinstance(data, list)
    return data


def same_core(tmp_path: Path) -> Core:
    """A core on the database the subprocesses wrote."""
    return Core(Settings(data_dir=tmp_path / "var", config_dir=ROOT / "config"))


def test_add_and_list_as_json(tmp_path: Path) -> None:
    pingan(tmp_path, "users", "add", "wang", "--role", "admin", stdin="first-secret\n")
    added = pingan(
        tmp_path, "users", "add", "li", "--role", "operator", "--town", "黄湖镇",
        stdin="second-secret\n",
    )  # fmt: skip
    assert "huanghu" in added.stdout
    listed = users_json(tmp_path)
    assert [(u["name"], u["role"], u["town"], u["active"]) for u in listed] == [
        ("li", "operator", "huanghu", True),
        ("wang", "admin", None, True),
    ]
    assert listed[0]["town_name"] == "黄湖镇"
    assert all("hash" not in json.dumps(u) and "secret" not in json.dumps(u) for u in listed)
    table = pingan(tmp_path, "users", "list").stdout
    assert "操作员" in table and "全区" in table


def test_password_is_stored_as_an_argon2_hash(tmp_path: Path) -> None:
    pingan(tmp_path, "users", "add", "wang", "--role", "viewer", "--password-stdin",
           stdin="first-secret\n")  # fmt: skip
    core = same_core(tmp_path)
    with Session(core.engine) as s:
        stored = s.scalars(select(User.password_hash)).one()
    core.close()
    assert stored.startswith("$argon2id$")
    assert "first-secret" not in stored


def test_duplicate_name_is_refused(tmp_path: Path) -> None:
    pingan(tmp_path, "users", "add", "wang", "--role", "admin", stdin="first-secret\n")
    again = pingan(
        tmp_path, "users", "add", "wang", "--role", "viewer", stdin="other-secret\n", ok=False
    )
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert [u["role"] for u in users_json(tmp_path)] == ["admin"]


def test_unknown_role_is_a_usage_error(tmp_path: Path) -> None:
    done = pingan(tmp_path, "users", "add", "wang", "--role", "boss", stdin="x" * 10, ok=False)
    assert done.returncode == 2
    assert "--role" in done.stderr and "approver" in done.stderr


def test_unknown_town_suggests_the_closest(tmp_path: Path) -> None:
    done = pingan(
        tmp_path, "users", "add", "li", "--role", "operator", "--town", "huanhu",
        stdin="first-secret\n", ok=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "unknown town 'huanhu'" in done.stderr
    assert "did you mean huanghu" in done.stderr
    assert users_json(tmp_path) == []


def test_short_or_missing_password_is_refused(tmp_path: Path) -> None:
    short = pingan(tmp_path, "users", "add", "wang", "--role", "admin", stdin="abc\n", ok=False)
    assert short.returncode == 1 and "at least 8" in short.stderr
    empty = pingan(tmp_path, "users", "add", "wang", "--role", "admin", stdin="", ok=False)
    assert empty.returncode == 1 and "no password on stdin" in empty.stderr
    assert users_json(tmp_path) == []


def test_disable_then_login_is_refused(tmp_path: Path) -> None:
    pingan(tmp_path, "users", "add", "wang", "--role", "operator", stdin="first-secret\n")
    core = same_core(tmp_path)
    ok = accounts.authenticate(core, "wang", "first-secret", peer="127.0.0.1")
    assert ok.outcome == LoginOutcome.OK and ok.account is not None
    assert accounts.session_account(core, ok.account.id, ok.account.session_epoch) is not None
    pingan(tmp_path, "users", "disable", "wang")
    assert accounts.authenticate(core, "wang", "first-secret", peer="127.0.0.1").outcome == (
        LoginOutcome.DISABLED
    )
    # The session opened before is over too.
    assert accounts.session_account(core, ok.account.id, ok.account.session_epoch) is None
    assert users_json(tmp_path)[0]["active"] is False
    core.close()
    missing = pingan(tmp_path, "users", "disable", "nobody", ok=False)
    assert missing.returncode == 1 and "no user named 'nobody'" in missing.stderr


def test_password_change(tmp_path: Path) -> None:
    pingan(tmp_path, "users", "add", "wang", "--role", "approver", stdin="first-secret\n")
    core = same_core(tmp_path)
    before = accounts.authenticate(core, "wang", "first-secret", peer="10.0.0.1").account
    assert before is not None
    pingan(tmp_path, "users", "password", "wang", stdin="second-secret\n")
    assert accounts.authenticate(core, "wang", "first-secret", peer="10.0.0.1").outcome == (
        LoginOutcome.BAD_CREDENTIALS
    )
    after = accounts.authenticate(core, "wang", "second-secret", peer="10.0.0.1")
    assert after.outcome == LoginOutcome.OK
    assert accounts.session_account(core, before.id, before.session_epoch) is None
    with Session(core.engine) as s:
        actions = [(a.action, a.subject) for a in s.scalars(select(AuditEntry).order_by("id"))]
    core.close()
    assert actions == [
        ("user.add", "wang"),
        ("user.login", "wang"),
        ("user.password", "wang"),
        ("user.login", "wang"),
    ]
    short = pingan(tmp_path, "users", "password", "wang", stdin="short\n", ok=False)
    assert short.returncode == 1 and "at least 8" in short.stderr


def test_throttle_counts_per_name_and_address_and_ages_out(core: Core) -> None:
    """Five failures lock this name from this address only; a sixth try waits for the window."""
    now = dt.datetime(2022, 10, 10, 1, 0, tzinfo=dt.UTC)
    clock = [now]
    core.clock = lambda: clock[0]
    accounts.create_user(core, "wang", Role.OPERATOR, "first-secret")
    for _ in range(5):
        bad = accounts.authenticate(core, "wang", "wrong-secret", peer="10.0.0.9")
        assert bad.outcome == LoginOutcome.BAD_CREDENTIALS
    locked = accounts.authenticate(core, "wang", "first-secret", peer="10.0.0.9")
    assert locked.outcome == LoginOutcome.THROTTLED
    assert 0 < locked.retry_after_seconds <= 15 * 60 + 1
    # Another address is not locked out by someone else's guesses.
    assert accounts.authenticate(core, "wang", "first-secret", peer="10.0.0.8").outcome == (
        LoginOutcome.OK
    )
    clock[0] = now + dt.timedelta(minutes=15, seconds=1)
    assert accounts.authenticate(core, "wang", "first-secret", peer="10.0.0.9").outcome == (
        LoginOutcome.OK
    )


def test_one_address_spraying_many_names_is_throttled_for_every_name(core: Core) -> None:
    """Guesses spread over many accounts (4 each, under the per-name limit) still add up: at
    the per-address limit every name from that address is refused, others are not."""
    now = dt.datetime(2022, 10, 10, 1, 0, tzinfo=dt.UTC)
    core.clock = lambda: now
    limit = core.settings.console.login_max_failures_per_address
    accounts.create_user(core, "wang", Role.OPERATOR, "first-secret")
    for i in range(limit):
        name = f"user{i // 4}"
        bad = accounts.authenticate(core, name, "guess-secret", peer="10.0.0.7")
        assert bad.outcome == LoginOutcome.BAD_CREDENTIALS, i
    sprayed = accounts.authenticate(core, "wang", "first-secret", peer="10.0.0.7")
    assert sprayed.outcome == LoginOutcome.THROTTLED
    assert accounts.authenticate(core, "wang", "first-secret", peer="10.0.0.6").outcome == (
        LoginOutcome.OK
    )


def test_unknown_user_fails_like_a_wrong_password(core: Core) -> None:
    result = accounts.authenticate(core, "nobody", "whatever-secret", peer="10.0.0.9")
    assert result.outcome == LoginOutcome.BAD_CREDENTIALS and result.account is None


def test_role_order() -> None:
    assert Role.ADMIN.allows(Role.APPROVER)
    assert Role.APPROVER.allows(Role.OPERATOR)
    assert Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR)
    assert not Role.OPERATOR.allows(Role.APPROVER)


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "semi;colon"])
def test_bad_user_names_are_refused(core: Core, name: str) -> None:
    with pytest.raises(accounts.AccountError, match="invalid user name"):
        accounts.create_user(core, name, Role.VIEWER, "first-secret")
