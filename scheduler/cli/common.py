"""What every command shares: the core from the context, output formats, the error handler."""

from __future__ import annotations

import enum
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from typer._click.exceptions import UsageError

if TYPE_CHECKING:
    from scheduler.core import Core

console = Console()
# Messages, not tables: a long path stays on one line for whoever reads or greps it.
err_console = Console(stderr=True, soft_wrap=True)


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


FORMAT_OPTION = typer.Option(
    OutputFormat.table, "--format", "-f", help="table, or json for scripts."
)


def core(ctx: typer.Context) -> Core:
    from scheduler.core import Core

    obj = ctx.find_root().obj
    if not isinstance(obj, Core):
        obj = Core()
        ctx.find_root().obj = obj
    return obj


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")
    sys.stdout.flush()


class FittingTable(Table):
    """A table that stays whole in a narrow terminal (80 columns, Chinese names 2 cells wide).

    Drawn with borders when they fit; otherwise without vertical borders and with one space
    between columns; if even that is too wide, long cells fold onto more lines. Text is never
    cut off at the right edge.
    """

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self._narrowest(console, options) > options.max_width:
            self.box = box.SIMPLE_HEAD
            self.show_edge = False
            self.pad_edge = False
            self.padding = (0, 0)
            if self._narrowest(console, options) > options.max_width:
                self._fix_widths(options.max_width)
        yield from super().__rich_console__(console, options)

    def _fix_widths(self, max_width: int) -> None:
        """Each column as wide as its longest cell word, the widest trimmed first if they do
        not all fit (their cells fold); what is left goes to the headers (which fold too)."""
        columns = self.columns
        available = max(max_width - (len(columns) - 1), len(columns))
        widths = [column.min_width or 1 for column in columns]
        while sum(widths) > available:
            widest = widths.index(max(widths))
            widths[widest] -= 1
        spare = available - sum(widths)
        for i, column in enumerate(columns):
            header = max((cell_len(w) for w in str(column.header).split()), default=1)
            grow = min(spare, max(0, header - widths[i]))
            widths[i] += grow
            spare -= grow
        for column, width in zip(columns, widths, strict=True):
            column.width = width
            column.min_width = None

    def _narrowest(self, console: Console, options: ConsoleOptions) -> int:
        # Measurement.get would clamp to the console's width, hiding the overflow.
        return self.__rich_measure__(console, options).minimum


def _unbroken(cell: str) -> int:
    """Cells a value needs to stay on one line: all of a short one ("behind ✗"), the longest
    word of a long one."""
    width = cell_len(cell)
    return width if width <= 10 else max((cell_len(w) for w in cell.split()), default=1)


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    """A table whose cells wrap rather than being cut: each column asks for the width of its
    longest word (a town name, a number), so names and figures stay whole where they can."""
    t = FittingTable(title=title, show_lines=False)
    cells = [["" if v is None else str(v) for v in r] for r in rows]
    for i, c in enumerate(columns):
        longest = max((_unbroken(r[i]) for r in cells), default=1)
        t.add_column(c, overflow="fold", min_width=min(longest, 24))
    for r in cells:
        t.add_row(*r)
    return t


def table_console() -> Console:
    """Where tables go: the terminal at its width; when piped, COLUMNS if set, else wide
    enough that a script reading the output gets one row per line."""
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(width=200)


ProgressCallback = Callable[[int, int], None]


class RateColumn(ProgressColumn):
    """Items per second (rich's own speed column counts bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


@contextmanager
def progress_bar(label: str, *, show: bool) -> Iterator[ProgressCallback]:
    """A bar with counts and rate while a long operation runs, on a terminal only.

    Yields `on_progress(done, total)` for the core to call; with `show` false (piped output,
    --format json) it does nothing, so nothing but the result reaches standard output.
    """
    if not show:
        yield lambda _done, _total: None
        return
    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task(label, total=None)

    def on_progress(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total or None)

    with progress:
        yield on_progress


def counting(on_progress: ProgressCallback, total: int) -> Callable[[int], None]:
    """Turn "n more done" reports (the expansion's chunks) into `on_progress(done, total)`."""
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        on_progress(min(done, total) if total else done, total)

    return advance


def recipients_total(c: Core, wanted: bool = True) -> int:
    """How many residents an expansion reads at most: the bar's total (0: not counted)."""
    if not wanted:
        return 0
    from scheduler.services.recipients import recipient_counts

    return recipient_counts(c).total


def show_progress(fmt: OutputFormat | None = None) -> bool:
    """Bars only for a person at a terminal, never in JSON output."""
    return console.is_terminal and fmt != OutputFormat.json


def usage_error(message: str) -> UsageError:
    """A usage error (exit 2, one line and a hint): options that do not go together."""
    return UsageError(message)


def refuse_unless_ready(c: Core) -> None:
    """`pingan run`'s pre-flight: exit 1 (before the lock) on what would make every send fail,
    log the rest as warnings (one campaign's mistake fails that campaign alone)."""
    from scheduler.logs import get_logger
    from scheduler.preflight import preflight

    log = get_logger(__name__)
    try:
        report = preflight(c)
    except Exception as exc:  # a fault in the check itself must not stop the weekly send
        log.warning("preflight.crashed", error=f"{type(exc).__name__}: {exc}")
        return
    for problem in report.problems:
        if not problem.fatal:
            log.warning("preflight.problem", problem=str(problem))
    if report.fatal:
        for problem in report.fatal:
            err_console.print(escape(str(problem)), highlight=False, soft_wrap=True)
        err_console.print(
            "[bold red]error:[/] refusing to start: every send would fail "
            "(fix the above; `pingan check` lists every problem)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
