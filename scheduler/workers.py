"""Several dispatcher processes (`pingan dispatch --workers N`, PINGAN_DISPATCH__WORKERS).

One Python process sending through an HTTP client is bound by its interpreter lock long
before a provider or PostgreSQL is; N processes each run their own dispatcher on the same
outbox. Claims never share a row (PostgreSQL's `FOR UPDATE SKIP LOCKED`) and the rate limits
are reserved in the database (scheduler.ratelimit), so they hold across the processes. On
SQLite, which has one writer, more than one worker is refused: one dispatcher with more send
threads is the way there.

The parent starts the workers (spawned, each with its own engine and connections), passes
SIGINT/SIGTERM on to them and waits: each worker puts the batches it has in flight back
unsent and reports its totals over its own pipe (a pipe per worker, so a worker killed
mid-write cannot block the others). A worker that dies without reporting is named; the
messages it had claimed stay `sending` until a live dispatcher reconciles them
(`stale_sending_seconds`).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from sqlalchemy import make_url

from scheduler.dispatcher import DispatchStats
from scheduler.exceptions import SettingsError
from scheduler.logs import configure_logging, get_logger
from scheduler.settings import Settings

log = get_logger("scheduler.workers")

SQLITE_REFUSAL = (
    "--workers above 1 needs PostgreSQL: SQLite has one writer, so dispatcher processes would "
    "queue behind each other. Use one dispatcher with more send threads "
    "(PINGAN_DISPATCH__CONCURRENCY) on SQLite."
)


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse several workers on SQLite (see the module's docstring)."""
    if workers > 1 and make_url(settings.effective_database_url).get_backend_name() == "sqlite":
        raise SettingsError(SQLITE_REFUSAL)


@dataclass
class WorkersResult:
    stats: DispatchStats
    # Workers that ended without reporting (killed, or crashed), one line each.
    problems: list[str] = field(default_factory=list)
    # Messages each worker sent, in the order they were started.
    sent_by_worker: list[int] = field(default_factory=list)


def _stats_dict(stats: DispatchStats) -> dict[str, Any]:
    return {
        **{name: getattr(stats, name) for name in DispatchStats._COUNTS},
        "by_outcome": dict(stats.by_outcome),
    }


def _stats_from(data: dict[str, Any]) -> DispatchStats:
    stats = DispatchStats()
    for name in DispatchStats._COUNTS:
        setattr(stats, name, int(data[name]))
    stats.by_outcome = {str(k): int(v) for k, v in data["by_outcome"].items()}
    return stats


def _worker(
    settings: Settings, until_empty: bool, max_wait: float, conn: Connection, index: int
) -> None:
    """One worker process: its own core, engine and dispatcher."""
    from scheduler.core import Core
    from scheduler.dispatcher import build_dispatcher

    configure_logging(settings.log_format, settings.log_level)
    core = Core(settings)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        core.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dispatcher = build_dispatcher(core)
    try:
        stats = dispatcher.run(
            until_empty=until_empty,
            max_wait=max_wait,
            progress=lambda total: conn.send(("progress", _stats_dict(total))),
        )
    finally:
        dispatcher.close()
        core.close()
    conn.send(("done", _stats_dict(stats)))
    conn.close()
    log.info("worker.done", worker=index, sent=stats.sent)


def run_workers(
    settings: Settings,
    workers: int,
    *,
    stop: threading.Event,
    until_empty: bool,
    max_wait: float = 0.0,
    progress: Callable[[DispatchStats], None] | None = None,
    restart: bool = False,
) -> WorkersResult:
    """Run `workers` dispatcher processes until they finish (until_empty) or `stop` is set.

    `restart` (the service): a worker that dies is started again, after a pause, until stop.
    `progress` gets the sum of the workers' running totals after any worker's batch.
    """
    check_workers(settings, workers)
    # The workers size their batches by how many they are (scheduler.dispatcher).
    settings = settings.model_copy(
        update={"dispatch": settings.dispatch.model_copy(update={"workers": workers})}
    )
    ctx = mp.get_context("spawn")
    latest: dict[int, DispatchStats] = {}
    finished: dict[int, DispatchStats] = {}
    problems: list[str] = []
    procs: dict[int, tuple[BaseProcess, Connection]] = {}

    def start(i: int) -> None:
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_worker,
            args=(settings, until_empty, max_wait, writer, i),
            name=f"pingan-dispatch-{i}",
        )
        p.start()
        writer.close()  # the parent keeps only the reading end: EOF when the worker ends
        procs[i] = (p, reader)

    for i in range(workers):
        start(i)
    started = workers
    log.info("workers.started", workers=workers, pids=[p.pid for p, _ in procs.values()])
    signalled = False
    restarts: dict[int, float] = {}
    while procs:
        if stop.is_set() and not signalled:
            for p, _ in procs.values():
                if p.is_alive() and p.pid is not None:
                    p.terminate()  # SIGTERM: the worker puts its batches back and reports
            signalled = True
        readers: dict[object, int] = {r: i for i, (_, r) in procs.items()}
        for ready in wait([r for _, r in procs.values()], timeout=0.5):
            i = readers[ready]
            r = procs[i][1]
            try:
                kind, data = r.recv()
                assert isinstance(data, dict)
            except (EOFError, OSError):
                p, _ = procs.pop(i)
                p.join()
                r.close()
                if i not in finished:
                    code = p.exitcode
                    how = f"signal {signal.Signals(-code).name}" if code and code < 0 else code
                    problems.append(f"worker {i} (pid {p.pid}) ended without reporting ({how})")
                    log.error("worker.died", worker=i, pid=p.pid, exitcode=code)
                    if latest.get(i) is not None:
                        finished[i] = latest.pop(i)
                    if restart and not stop.is_set():
                        restarts[i] = restarts.get(i, 0) + 1
                        stop.wait(min(30.0, 2.0 * restarts[i]))
                        if not stop.is_set():
                            start(started)
                            restarts[started] = restarts[i]
                            started += 1
                continue
            if kind == "done":
                finished[i] = _stats_from(data)
                latest.pop(i, None)
            else:
                latest[i] = _stats_from(data)
            if progress is not None:
                progress(_sum([*finished.values(), *latest.values()]))
    parts = {**finished, **latest}
    return WorkersResult(
        _sum(list(parts.values())), problems, [parts[i].sent for i in sorted(parts)]
    )


def _sum(parts: list[DispatchStats]) -> DispatchStats:
    total = DispatchStats()
    for part in parts:
        total.add(part)
    return total
