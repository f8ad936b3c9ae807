"""`pingan run`: the long-running service.

One process per database runs the job table of `scheduler.loop` (APScheduler 3, its job store
in the project database: each campaign at its fire times, the quota check, the monthly report
on its due day); others wait as standbys on the database lock. The same process drains the
outbox and, where configured, serves HTTP. The jobs read the time through `Core.clock`
(APScheduler 3 itself wakes on the wall clock; the simulator walks the same table instead).
SIGTERM and Ctrl-C stop it cleanly: the running chunk commits, nothing is left half written.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from scheduler.core import Core
from scheduler.expansion import ExpansionResult
from scheduler.logs import get_logger
from scheduler.loop import MONTHLY_REPORT_JOB, QUOTA_CHECK_JOB, Job, Loop
from scheduler.models import OccurrenceState
from scheduler.store.locks import DatabaseLock
from scheduler.workers import check_workers, run_workers

log = get_logger("scheduler.service")

# APScheduler stores jobs as a reference to a module-level function; it reaches the running
# service through this.
_active: Service | None = None


def table_job(job_id: str) -> None:
    """What APScheduler calls: the job table's row `job_id`, on the active service's loop."""
    service = _active
    if service is None or service.loop is None:
        log.warning("job.no_service", job=job_id)
        return
    job = service.table.get(job_id)
    if job is None:
        log.warning("job.not_in_table", job=job_id)
        return
    job.run(service.loop)


def fire_campaign_job(campaign_name: str) -> None:
    """Jobs stored by earlier versions name this; the table's job runs."""
    table_job(campaign_name)


def quota_check_job() -> None:
    """Jobs stored by earlier versions name this; the table's job runs."""
    table_job(QUOTA_CHECK_JOB)


def report_job() -> None:
    """Jobs stored by earlier versions name this; the table's job runs."""
    table_job(MONTHLY_REPORT_JOB)


class Service:
    def __init__(
        self,
        core: Core,
        *,
        standby_poll: float = 5.0,
        loop_poll: float | None = None,
        with_dispatch: bool = True,
        with_http: bool = True,
        once: bool = False,
        background_tasks: list[Callable[[], None]] | None = None,
    ) -> None:
        self.core = core
        self.stop = core.stop
        self.standby_poll = standby_poll
        self.loop_poll = loop_poll if loop_poll is not None else core.settings.dispatch.poll_seconds
        self.with_dispatch = with_dispatch
        self.with_http = with_http
        self.once = once
        self._threads: list[threading.Thread] = []
        self._http: Any = None
        self.lock = DatabaseLock(core.engine)
        self._reload = threading.Event()
        self.loop: Loop | None = None
        self.table: dict[str, Job] = {}
        self.apscheduler: BackgroundScheduler | None = None
        self.state = "starting"
        self.background_tasks = background_tasks or []
        # Occurrences found failed at start (catch-up); `run --once` names them and exits 1.
        self.failed: list[ExpansionResult] = []

    @property
    def pidfile(self) -> Path:
        return self.core.settings.data_dir / "pingan-run.pid"

    # -- signals -----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("service.stopping", signal=signal.Signals(signum).name)
        self.stop.set()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload.set()

    def request_reload(self) -> None:
        self._reload.set()

    # -- the run loop ------------------------------------------------------------------------

    def run(self) -> int:
        global _active
        settings = self.core.settings
        if self.with_dispatch:
            check_workers(settings, settings.dispatch.workers)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(str(os.getpid()))
        try:
            if self.with_http:
                # Before the lock: a standby serves webhooks and the API too (they only write
                # to the database), and /healthz tells a standby from a dead node.
                self._start_http()
            if not self._wait_for_lock():
                return 0
            _active = self
            self.state = "active"
            log.info("service.active", holder=self.lock.holder)
            if self.with_http and not self._http.alive():
                self._start_http()  # the port was the old leader's, on this same host
            self.loop = Loop(self.core)
            self.failed = [r for r in self.loop.catch_up() if r.state == OccurrenceState.FAILED]
            if self.once:
                if self.with_dispatch:
                    stats = self._dispatch_once()
                    log.info(
                        "dispatch.done",
                        sent=stats.sent,
                        failed=stats.failed,
                        retried=stats.retried,
                        unknown=stats.unknown,
                    )
                return 1 if self.failed else 0
            self._start_apscheduler()
            if self.with_dispatch:
                self._start_thread("dispatch", self._dispatch_forever)
            while not self.stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self._rebuild()
                if not self.lock.refresh():
                    log.error("service.lock_lost")
                    break
                for task in self.background_tasks:
                    task()
                self.stop.wait(self.loop_poll)
            return 0
        finally:
            self._shutdown()

    def _dispatcher(self) -> Any:
        from scheduler.dispatcher import build_dispatcher

        return build_dispatcher(self.core, stop=self.stop)

    def _dispatch_once(self) -> Any:
        workers = self.core.settings.dispatch.workers
        if workers > 1:
            return run_workers(self.core.settings, workers, stop=self.stop, until_empty=True).stats
        dispatcher = self._dispatcher()
        try:
            return dispatcher.run(until_empty=True)
        finally:
            dispatcher.close()

    def _dispatch_forever(self) -> None:
        """The service's dispatcher: in this process, or PINGAN_DISPATCH__WORKERS processes
        (restarted if one dies) until the service stops."""
        workers = self.core.settings.dispatch.workers
        if workers > 1:
            run_workers(
                self.core.settings, workers, stop=self.stop, until_empty=False, restart=True
            )
            return
        dispatcher = self._dispatcher()
        try:
            dispatcher.run()
        finally:
            dispatcher.close()

    def _start_thread(self, name: str, target: Callable[[], object]) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception:
                log.exception("service.thread_failed", thread=name)
                self.stop.set()

        t = threading.Thread(target=guarded, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _start_http(self) -> None:
        from scheduler.web import HttpServer, create_app

        settings = self.core.settings
        self._http = HttpServer(
            create_app(self.core, health=self.health),
            settings.http_host,
            settings.http_port,
            log_level=settings.log_level,
        )
        self._http.start()
        log.info("http.listening", host=settings.http_host, port=settings.http_port)

    def _wait_for_lock(self) -> bool:
        announced = False
        while not self.stop.is_set():
            if self.lock.try_acquire():
                return True
            if not announced:
                self.state = "standby"
                log.info("service.standby", holder=self.lock.current_holder())
                announced = True
            self.stop.wait(self.standby_poll)
        return False

    def _start_apscheduler(self, *, paused: bool = False) -> None:
        settings = self.core.settings
        sched = BackgroundScheduler(
            jobstores={
                "default": SQLAlchemyJobStore(engine=self.core.engine, tablename="apscheduler_jobs")
            },
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(settings.misfire_grace_hours * 3600) or None,
            },
            timezone=settings.tz,
        )
        sched.start(paused=True)
        self.apscheduler = sched
        self._build_jobs()
        if not paused:  # paused: the table registered, nothing run (a test looks at it)
            sched.resume()

    def _build_jobs(self) -> None:
        """Put the loop's job table into APScheduler (and drop jobs no longer in it)."""
        sched = self.apscheduler
        assert sched is not None and self.loop is not None
        self.table = {job.id: job for job in self.loop.jobs(after=self.core.clock())}
        for job in sched.get_jobs():
            if job.id not in self.table:
                job.remove()
        for job_id, job in self.table.items():
            sched.add_job(
                table_job,
                job.trigger,
                args=[job_id],
                id=job_id,
                name=job_id,
                replace_existing=True,
            )
        jobs = {j.id: j.next_run_time for j in sched.get_jobs()}
        log.info(
            "service.jobs",
            jobs={k: v.isoformat() if v else None for k, v in jobs.items()},
        )

    def _rebuild(self) -> None:
        try:
            self.core.reload()
        except Exception as exc:
            log.error("campaigns.reload_failed", error=str(exc))
            return
        assert self.loop is not None
        self.loop.rebuild_planner()
        self._build_jobs()
        log.info("campaigns.reloaded", campaigns=len(self.core.campaigns.all))

    def fire_due(self, campaign_name: str) -> None:
        """Fire the campaign's latest due time (the job runs once for coalesced misses)."""
        if self.loop is not None:
            self.loop.fire_due(campaign_name)

    def _shutdown(self) -> None:
        global _active
        self.stop.set()
        if self.apscheduler is not None:
            self.apscheduler.shutdown(wait=True)
            self.apscheduler = None
        for t in self._threads:
            t.join(timeout=60)
        if self._http is not None:
            self._http.stop()
        _active = None if _active is self else _active
        self.lock.release()
        self.state = "stopped"
        try:
            if self.pidfile.read_text() == str(os.getpid()):
                self.pidfile.unlink()
        except OSError:
            pass
        log.info("service.stopped")

    def health(self) -> dict[str, Any]:
        jobs = []
        if self.apscheduler is not None:
            jobs = [
                {
                    "id": j.id,
                    "next_run_time": j.next_run_time.isoformat() if j.next_run_time else None,
                }
                for j in self.apscheduler.get_jobs()
            ]
        return {
            "scheduler": self.state,
            "lock_holder": self.lock.holder if self.lock.held else None,
            "jobs": jobs,
        }
