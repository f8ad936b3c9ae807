"""What the CLI draws: progress bars on a terminal only, tables whole at 80 columns."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.cells import cell_len

from tests.acceptance.test_cli_acceptance import ROOT, as_json, pingan

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_terminal(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run `pingan` with a pseudo-terminal as its standard output and error, as a person
    at a terminal would; returns the exit code and everything drawn (escapes removed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_")}
    env.update(
        PINGAN_DATA_DIR=str(tmp_path / "var"),
        TERM="xterm-256color",
        COLUMNS="120",
        LINES="40",
    )
    env.pop("NO_COLOR", None)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler", *args],
        cwd=ROOT,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    rc = proc.wait(timeout=300)
    return rc, ANSI.sub("", out.decode("utf-8", errors="replace"))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with 300 residents and the weekly SMS of 2022-W41 sent (read only)."""
    tmp_path = tmp_path_factory.mktemp("loaded")
    csv = tmp_path / "list.csv"
    pingan(tmp_path, "recipients", "generate", "--count", "300", "--out", str(csv))
    pingan(tmp_path, "recipients", "import", str(csv))
    pingan(tmp_path, "run", "--once", "--clock", "2022-10-10T09:30")
    return tmp_path


def test_a_bar_with_counts_and_rate_is_drawn_on_a_terminal(tmp_path: Path) -> None:
    out_file = tmp_path / "list.csv"
    rc, drawn = on_terminal(
        tmp_path, "recipients", "generate", "--count", "6000", "--out", str(out_file)
    )
    assert rc == 0, drawn
    assert re.search(r"generating .*6000/6000 +[\d,]+/s", drawn), drawn
    assert "wrote 6000 synthetic recipients" in drawn
    assert len(out_file.read_text(encoding="utf-8").splitlines()) == 6001

    pingan(tmp_path, "recipients", "import", str(out_file))
    rc, drawn = on_terminal(
        tmp_path, "campaigns", "run", "weekly-antifraud", "--at", "2022-10-10T09:00"
    )
    assert rc == 0, drawn
    assert re.search(r"expanding .*6000/6000 +[\d,]+/s", drawn), drawn
    assert "queued 6000" in drawn


def test_json_on_a_terminal_draws_no_bar(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    pingan(tmp_path, "recipients", "generate", "--count", "500", "--out", str(csv))
    pingan(tmp_path, "recipients", "import", str(csv))
    rc, drawn = on_terminal(
        tmp_path,
        "campaigns",
        "run",
        "weekly-antifraud",
        "--at",
        "2022-10-10T09:00",
        "--format",
        "json",
    )
    assert rc == 0, drawn
    assert "expanding" not in drawn
    # The logs share the terminal; the JSON document is what follows them.
    start = drawn.index("{\r\n")
    data = json.loads(drawn[start:].replace("\r\n", "\n"))
    assert data["queued"] == 500


def test_piped_output_carries_no_progress(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    done = pingan(tmp_path, "recipients", "generate", "--count", "4000", "--out", str(csv))
    assert done.stdout == ""
    assert done.stderr.strip() == f"wrote 4000 synthetic recipients to {csv}"
    pingan(tmp_path, "recipients", "import", str(csv))
    done = pingan(tmp_path, "campaigns", "run", "weekly-antifraud", "--at", "2022-10-10T09:00")
    assert done.stdout.strip().startswith("occurrence 1: ready, queued 4000")
    assert "\r" not in done.stdout + done.stderr
    assert "expanding" not in done.stdout + done.stderr
    data = as_json(
        pingan(
            tmp_path,
            "campaigns",
            "run",
            "weekly-antifraud",
            "--at",
            "2022-10-17T09:00",
            "--format",
            "json",
        )
    )
    assert data["queued"] == 4000
    # Generated to standard output, the CSV is all there is.
    done = pingan(tmp_path, "recipients", "generate", "--count", "50")
    lines = done.stdout.splitlines()
    assert len(lines) == 51
    assert all(line.count(",") == lines[0].count(",") for line in lines)


def test_simulate_json_stays_parseable_when_piped(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    pingan(tmp_path, "recipients", "generate", "--count", "200", "--out", str(csv))
    done = pingan(
        tmp_path,
        "simulate",
        "--from",
        "2022-10-10",
        "--to",
        "2022-10-11",
        "--recipients",
        str(csv),
        "--format",
        "json",
        ok=False,
    )
    assert "simulating" not in done.stdout + done.stderr
    assert json.loads(done.stdout)["recipients"] == 200


def towns() -> list[dict[str, Any]]:
    district = yaml.safe_load((ROOT / "config" / "district.yaml").read_text(encoding="utf-8"))
    return list(district["towns"])


@pytest.mark.parametrize(
    ("args", "shows"),
    [
        (("quota", "status", "--on", "2022-10-12"), ("id", "name")),
        (
            (
                "quota",
                "status",
                "--on",
                "2022-10-12",
                "--rule",
                "town-weekly-oct",
                "--by",
                "village",
            ),
            ("village",),
        ),
        (("quota", "targets", "--rule", "town-weekly-oct"), ("id", "name")),
        (("delivery", "stats", "--by", "town"), ("id",)),
        (("recipients", "stats"), ("id", "name")),
    ],
)
def test_tables_keep_every_town_whole_at_80_columns(
    loaded: Path, args: tuple[str, ...], shows: tuple[str, ...]
) -> None:
    done = pingan(loaded, *args, COLUMNS="80")
    lines = done.stdout.splitlines()
    assert lines
    assert max(cell_len(line) for line in lines) <= 80, done.stdout
    for town in towns():
        for key in shows:
            names = [v["name"] for v in town["villages"]] if key == "village" else [town[key]]
            for name in names:
                assert name in done.stdout, (name, done.stdout)
    assert "…" not in done.stdout  # nothing cut off with an ellipsis


def test_a_wide_terminal_keeps_the_boxed_table(loaded: Path) -> None:
    done = pingan(loaded, "delivery", "stats", "--by", "town", COLUMNS="160")
    assert "┃ town" in done.stdout
    for name in ("baiguan", "huanghu"):
        assert re.search(rf"│ {name} +│", done.stdout)
    # Wide enough for the town's Chinese name beside its id.
    assert "┃ name" in done.stdout
    assert re.search(r"│ baiguan +│ 百官街道 +│", done.stdout)
