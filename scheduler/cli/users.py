"""`pingan users`: console accounts (add, list, disable, password)."""

from __future__ import annotations

import getpass
import sys

import typer

from scheduler.cli.common import FORMAT_OPTION, OutputFormat, console, core, print_json, table
from scheduler.exceptions import PingAnError
from scheduler.models import Role

app = typer.Typer(
    help="Console accounts: who may log in to the web pages, with which role and town.",
    no_args_is_help=True,
)

PASSWORD_STDIN = typer.Option(
    False,
    "--password-stdin",
    help="Read the password from the first line of stdin (the default when stdin is not a "
    "terminal).",
)


def _read_password(from_stdin: bool) -> str:
    """A hidden prompt (asked twice) on a terminal, else the first line of stdin."""
    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise PingAnError("no password on stdin")
        return line.rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise PingAnError("the two passwords differ")
    return first


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):
        return "cli"


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Login name, e.g. zhangsan."),
    role: Role = typer.Option(
        ...,
        "--role",
        help="viewer (看), operator (pause/resume/retry, uploads), approver (approves "
        "templates), admin (everything, district-wide).",
        case_sensitive=False,
    ),
    town: str | None = typer.Option(
        None, "--town", help="Town id or name: the user sees and acts on this town only."
    ),
    password_stdin: bool = PASSWORD_STDIN,
) -> None:
    """Add a console user; the password comes from a hidden prompt or stdin."""
    from scheduler import accounts

    c = core(ctx)
    password = _read_password(password_stdin)
    account = accounts.create_user(c, name, role, password, town=town, actor=_actor())
    scope = f", town {account.town_id} ({account.town_name})" if account.town_id else ""
    console.print(f"added {account.name}: {account.role} ({account.role_label}){scope}")


@app.command("list")
def list_users(ctx: typer.Context, fmt: OutputFormat = FORMAT_OPTION) -> None:
    """List console users with role, town and last login."""
    from scheduler import accounts

    users = accounts.list_users(core(ctx))
    if fmt == OutputFormat.json:
        print_json([u.to_json() for u in users])
        return
    rows = [
        [
            u.name,
            f"{u.role} ({u.role_label})",
            f"{u.town_id} ({u.town_name})" if u.town_id else "全区",
            "active" if u.active else "disabled",
            u.last_login_at.isoformat(timespec="seconds") if u.last_login_at else "",
        ]
        for u in users
    ]
    console.print(table(None, ["name", "role", "town", "state", "last login"], rows))


@app.command("disable")
def disable(ctx: typer.Context, name: str = typer.Argument(..., help="Login name.")) -> None:
    """Refuse the user's logins from now on and end its open sessions."""
    from scheduler import accounts

    account = accounts.disable_user(core(ctx), name, actor=_actor())
    console.print(f"disabled {account.name}")


@app.command("password")
def password(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Login name."),
    password_stdin: bool = PASSWORD_STDIN,
) -> None:
    """Set a new password (hidden prompt or stdin); the user's open sessions end."""
    from scheduler import accounts

    c = core(ctx)
    account = accounts.get_user(c, name)
    new = _read_password(password_stdin)
    accounts.set_password(c, account.name, new, actor=_actor())
    console.print(f"password changed for {account.name}")
