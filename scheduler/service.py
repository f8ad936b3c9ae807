"""`pingan run`: the long-running service.

One process per database fires campaigns (APScheduler 3, its job store in the project database,
woken at each campaign's next fire time); others wait as standbys on the database lock. The
same process drains the outbox and, where configured, serves HTTP. SIGTERM and Ctrl-C stop it
cleanly: the running chunk commits, nothing is left half written.
"""

from __future__ import annotations

import datetime as dt
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
from scheduler.expansion import ExpansionResult, describe, masked_traceback
from scheduler.logs import get_logger
from scheduler.models import OccurrenceState
from scheduler.planner import Planner
from scheduler.store.locks import DatabaseLock

log = get_logger("scheduler.service")

# APScheduler stores jobs as a reference to a module-level function; it reaches the running
# service through this.
_active: Service | None = None


def fire_campaign_job(campaign_name: str) -> None:
    """What APScheduler calls at a campaign's fire time."""
    service = _active
    if service is None:
        log.warning("job.no_service", campaign=campaign_name)
        return
    service.fire_due(campaign_name)


def quota_check_job() -> None:
    """What APScheduler calls on the quota check day (PINGAN_QUOTA_CHECK)."""
    service = _active
    if service is not None and not service.stop.is_set():
        from scheduler.topups import check_quotas

        with service._fire_lock:
            check_quotas(service.core)


def report_job() -> None:
    """What APScheduler calls each morning: the monthly report is written on its due day."""
    service = _active
    if service is not None and not service.stop.is_set():
        from scheduler.reports import write_due_report

        write_due_report(
            service.core, service.core.clock().astimezone(service.core.settings.tz).date()
        )


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
        self._fire_lock = threading.Lock()
        self.planner: Planner | None = None
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
            self.planner = self.core.planner()
            self.failed = [
                r
                for r in self.planner.catch_up(self.core.clock())
                if r.state == OccurrenceState.FAILED
            ]
            if self.once:
                if self.with_dispatch:
                    dispatcher = self._dispatcher()
                    try:
                        stats = dispatcher.run(until_empty=True)
                    finally:
                        dispatcher.close()
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

    def _dispatch_forever(self) -> None:
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

    def _start_apscheduler(self) -> None:
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
        sched.resume()

    def _build_jobs(self) -> None:
        sched = self.apscheduler
        assert sched is not None
        tz = self.core.settings.tz
        wanted = {}
        now = self.core.clock()
        for c in self.core.campaigns.scheduled():
            trigger = c.trigger(tz)
            # A campaign whose window is over has nothing left to fire (missed firings were
            # caught up at start, within the grace period).
            nxt = trigger.get_next_fire_time(None, now) if trigger is not None else None
            if nxt is None or nxt < now:  # a one-off date trigger answers its past date
                continue
            wanted[c.name] = trigger
        from apscheduler.triggers.cron import CronTrigger

        from scheduler.topups import check_trigger

        housekeeping = {
            "_quota_check": (quota_check_job, check_trigger(self.core.settings.quota_check, tz)),
            "_monthly_report": (report_job, CronTrigger(hour=7, minute=30, timezone=tz)),
        }
        for job in sched.get_jobs():
            if job.id not in wanted and job.id not in housekeeping:
                job.remove()
        for job_id, (func, trig) in housekeeping.items():
            sched.add_job(func, trig, id=job_id, name=job_id, replace_existing=True)
        for name, trigger in wanted.items():
            sched.add_job(
                fire_campaign_job,
                trigger,
                args=[name],
                id=name,
                name=name,
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
        with self._fire_lock:
            self.planner = self.core.planner()
        self._build_jobs()
        log.info("campaigns.reloaded", campaigns=len(self.core.campaigns.all))

    def fire_due(self, campaign_name: str) -> None:
        """Fire the campaign's latest due time (the job runs once for coalesced misses)."""
        with self._fire_lock:
            planner = self.planner
            if planner is None or self.stop.is_set():
                return
            try:
                campaign = planner.campaigns.get(campaign_name)
            except Exception:
                log.warning("job.unknown_campaign", campaign=campaign_name)
                return
            now = self.core.clock()
            t = planner.latest_due(campaign, now + dt.timedelta(seconds=1))
            if t is None:
                log.info("job.nothing_due", campaign=campaign_name)
                return
            try:
                planner.fire_scheduled(campaign, t)
            except Exception as exc:
                # The expander records an occurrence's own failure; this is the database or
                # the like. The next firing, or the catch-up at the next start, tries again.
                log.error(
                    "job.fire_failed",
                    campaign=campaign_name,
                    error=describe(exc),
                    traceback=masked_traceback(exc),
                )

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
