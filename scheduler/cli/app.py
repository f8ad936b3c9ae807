"""The root `pingan` app and its error handler."""

from __future__ import annotations

import sys

import typer

from scheduler.cli import campaigns as campaigns_cli
from scheduler.cli import cases as cases_cli
from scheduler.cli import db as db_cli
from scheduler.cli import delivery as delivery_cli
from scheduler.cli import letters as letters_cli
from scheduler.cli import quota as quota_cli
from scheduler.cli import recipients as recipients_cli
from scheduler.cli import report as report_cli
from scheduler.cli import service as service_cli
from scheduler.cli import simulate as simulate_cli
from scheduler.cli import templates as templates_cli
from scheduler.cli import users as users_cli
from scheduler.cli.common import console, err_console, print_json
from scheduler.core import Core
from scheduler.exceptions import PingAnError
from scheduler.logs import configure_logging
from scheduler.settings import load_settings

app = typer.Typer(
    name="pingan",
    help="Weekly anti-fraud SMS and letters for district and town safety offices, "
    "counted against the province's quotas.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db_cli.app, name="db")
app.add_typer(recipients_cli.app, name="recipients")
app.add_typer(templates_cli.app, name="templates")
app.add_typer(letters_cli.app, name="letters")
app.add_typer(quota_cli.app, name="quota")
app.add_typer(campaigns_cli.app, name="campaigns")
app.add_typer(campaigns_cli.occurrences_app, name="occurrences")
app.add_typer(cases_cli.app, name="cases")
app.command("run")(service_cli.run)
app.command("dispatch")(delivery_cli.dispatch)
app.add_typer(delivery_cli.app, name="delivery")
app.command("simulate")(simulate_cli.simulate_command)
app.add_typer(report_cli.app, name="report")
app.add_typer(report_cli.activities_app, name="activities")
app.add_typer(users_cli.app, name="users")


@app.callback()
def _root(ctx: typer.Context) -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    ctx.obj = Core(settings)


@app.command("settings")
def show_settings(ctx: typer.Context) -> None:
    """Print the effective settings (environment, .env, defaults) with secrets hidden."""
    core = ctx.obj
    assert isinstance(core, Core)
    print_json(core.settings.public_view())


@app.command("check")
def check(ctx: typer.Context) -> None:
    """Validate settings and configuration and open the database; answers by exit code."""
    core = ctx.obj
    assert isinstance(core, Core)
    district = core.district
    core.engine  # noqa: B018 - opening it upgrades the schema and proves the URL works
    console.print(f"ok: {district.district.name}, {len(district.towns)} towns")


def _cause_chain(exc: BaseException) -> list[str]:
    lines = []
    seen: BaseException | None = exc
    while seen is not None:
        lines.append(str(seen) or type(seen).__name__)
        seen = seen.__cause__
    return lines


def main() -> None:
    """Entry point: one handler turns project errors into a message and exit code 1."""
    try:
        # Without standalone mode typer returns a typer.Exit's code instead of exiting.
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except PingAnError as exc:
        chain = _cause_chain(exc)
        err_console.print(f"[bold red]error:[/] {chain[0]}", highlight=False, markup=True)
        for cause in chain[1:]:
            err_console.print(f"  caused by: {cause}", highlight=False)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        # typer >= 0.2x vendors click: its usage errors derive from TyperException instead.
        show = getattr(exc, "show", None)
        if isinstance(exc, typer.TyperException) and callable(show):
            show()
            sys.exit(exc.exit_code)
        raise
