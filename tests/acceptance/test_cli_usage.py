"""How `pingan` answers a person who typed something wrong: one line, a hint, exit 2.

Run in subprocesses, as an operator would; the installed typer ships its own click, so these
prove the error handler catches the exceptions it really raises.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.test_cli_acceptance import pingan

USAGE_ERRORS = [
    # (arguments, command path in the hint, words the message names)
    (["quota", "status", "--week", "bad"], "pingan quota status", "--week"),
    (
        ["quota", "status", "--week", "2022-W41", "--month", "2022-10"],
        "pingan quota status",
        "at most one",
    ),
    (["quota", "status", "--by", "nowhere"], "pingan quota status", "nowhere"),
    (["quota", "targets", "--nope"], "pingan quota targets", "--nope"),
    (["recipients", "import"], "pingan recipients import", "Missing argument"),
    (["recipients", "generate", "--count", "-5"], "pingan recipients generate", "--count"),
    (["templates", "preview"], "pingan templates preview", "Missing argument"),
    (["campaigns", "run"], "pingan campaigns run", "Missing argument"),
    (["occurrences", "--format", "xml"], "pingan occurrences", "xml"),
    (["delivery", "stats", "--by", "weather"], "pingan delivery stats", "--by"),
    (["dispatch", "--bogus"], "pingan dispatch", "--bogus"),
    (["simulate", "--from", "2022-10-01"], "pingan simulate", "--to"),
    (["simulate", "--from", "yesterday", "--to", "2022-10-02"], "pingan simulate", "yesterday"),
    (["simulate", "--from", "2022-10-02", "--to", "2022-10-01"], "pingan simulate", "before"),
    (["no-such-command"], "pingan", "no-such-command"),
    (["check", "--format", "yaml"], "pingan check", "yaml"),
]


@pytest.mark.parametrize(
    ("args", "command", "names"), USAGE_ERRORS, ids=[" ".join(a) for a, _c, _n in USAGE_ERRORS]
)
def test_a_usage_error_is_one_line_and_a_hint(
    tmp_path: Path, args: list[str], command: str, names: str
) -> None:
    done = pingan(tmp_path, *args, ok=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("error: ")
    assert names in lines[0]
    assert lines[1] == f"Try '{command} --help'."


def test_a_project_error_exits_1_with_its_message_only(tmp_path: Path) -> None:
    done = pingan(tmp_path, "templates", "preview", "no-such-template", ok=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: no template 'no-such-template' in templates/messages"
    ]


def test_a_group_without_a_command_shows_its_help(tmp_path: Path) -> None:
    done = pingan(tmp_path, "quota", ok=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "status" in done.stdout + done.stderr
