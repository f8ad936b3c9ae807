"""The root `pingan` app and its error handler."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
import typer.main
from rich.markup import escape
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from scheduler.cli import campaigns as campaigns_cli
from scheduler.cli import cases as cases_cli
from scheduler.cli import db as db_cli
from scheduler.cli import delivery as delivery_cli
from scheduler.cli import letters as letters_cli
from scheduler.cli import quota as quota_cli
from scheduler.cli import recipients as recipients_cli
from scheduler.cli import report as report_cli
from scheduler.cli import sends as sends_cli
from scheduler.cli import service as service_cli
from scheduler.cli import simulate as simulate_cli
from scheduler.cli import templates as templates_cli
from scheduler.cli import users as users_cli
from scheduler.cli.common import FORMAT_OPTION, OutputFormat, console, core, err_console, print_json
from scheduler.exceptions import PingAnError, SettingsError

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
app.add_typer(sends_cli.app, name="sends")
app.add_typer(users_cli.app, name="users")


@app.callback()
def _root(ctx: typer.Context) -> None:
    # Imported here, not at the top: `pingan --help` and every command's help load no
    # settings, database or provider code, and each command imports only what it runs.
    from scheduler.core import Core
    from scheduler.logs import configure_logging
    from scheduler.settings import load_settings

    try:
        settings = load_settings()
    except SettingsError:
        if ctx.invoked_subcommand == "check":
            return  # `check` reports each bad setting among its problems
        raise
    configure_logging(settings.log_format, settings.log_level)
    ctx.obj = Core(settings)


@app.command("settings")
def show_settings(ctx: typer.Context) -> None:
    """Print the effective settings (environment, .env, defaults) with secrets hidden."""
    print_json(core(ctx).settings.public_view())


@app.command("check")
def check(
    ctx: typer.Context,
    per_town: int = typer.Option(
        3, "--per-town", min=1, help="Residents of each town to render each template for."
    ),
    fmt: OutputFormat = FORMAT_OPTION,
) -> None:
    """Pre-flight: settings, every YAML file, every cross-reference (campaign → template,
    approval, channel; quota rule → town; segment → template) and each campaign's templates
    rendered for real residents. One line per problem (file:line: field: reason); exit 1 on
    any problem, 0 when all is well."""
    from scheduler.preflight import Report, preflight, settings_problems

    problems = settings_problems()
    report = Report(problems) if problems else preflight(core(ctx), per_town=per_town)
    if fmt == OutputFormat.json:
        print_json(report.to_dict())
    else:
        for problem in report.problems:
            console.print(escape(str(problem)), highlight=False, soft_wrap=True)
        if report.ok:
            n = report.checked
            console.print(
                f"ok: {n['files']} files, {n['campaigns']} campaigns, {n['templates']} "
                f"templates, {n['quota_rules']} quota rules; {n['renders']} renders for "
                f"{n['residents_sampled']} residents",
                highlight=False,
            )
        else:
            err_console.print(
                f"{len(report.problems)} problem(s); {len(report.fatal)} would stop every send "
                "(pingan run refuses to start on those)",
                highlight=False,
            )
    if not report.ok:
        raise typer.Exit(1)


def _cause_chain(exc: BaseException) -> list[str]:
    lines = []
    seen: BaseException | None = exc
    while seen is not None:
        lines.append(str(seen) or type(seen).__name__)
        seen = seen.__cause__
    return lines


def _command_path(args: Sequence[str]) -> str:
    """`pingan quota status` from the command line, for the hint after a usage error.

    Errors raised in a command's body carry no context, so the path is read back from the
    arguments through the command tree.
    """
    path = ["pingan"]
    command: Any = typer.main.get_command(app)
    for arg in args:
        sub = getattr(command, "commands", {}).get(arg)
        if sub is None:
            if arg.startswith("-"):
                continue  # a root option such as --help
            break
        path.append(arg)
        command = sub
    return " ".join(path)


def _show_usage_error(exc: typer.TyperException, args: Sequence[str]) -> None:
    """One line saying what is wrong and one pointing at the help: no usage dump, no traceback."""
    if isinstance(exc, NoArgsIsHelpError):
        # `pingan quota` alone: the group's help is the answer.
        exc.show()
        return
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else _command_path(args)
    # typer checks choices with pydantic, whose messages start with "Value error, ".
    message = " ".join(exc.format_message().replace("Value error, ", "").split())
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if isinstance(exc, UsageError):
        err_console.print(f"Try '{where} --help'.", highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: project errors exit 1 with their causes, usage errors exit 2 with a hint."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # Without standalone mode typer returns a typer.Exit's code instead of exiting, and
        # raises usage errors here rather than printing its own boxed panel.
        rc = app(args=args, prog_name="pingan", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except PingAnError as exc:
        chain = _cause_chain(exc)
        err_console.print(f"[bold red]error:[/] {escape(chain[0])}", highlight=False)
        for cause in chain[1:]:
            err_console.print(f"  caused by: {escape(cause)}", highlight=False)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.TyperException as exc:
        # typer 0.29 ships its own click: its usage errors derive from typer.TyperException,
        # not from the separately installed click's ClickException.
        _show_usage_error(exc, args)
        sys.exit(getattr(exc, "exit_code", 1))
