"""Dry-run reconciliation after a crash: N messages left `sending`, a log of L earlier lines.

    .venv/bin/python benchmarks/bench_reconcile.py [--stuck 500] [--log-lines 20000]

Half the stuck messages are in the dry-run log (sent before the crash), half are not. In the
same run, on the same log:
- per message: `Provider.find_sent_many`'s default, one `find_sent` (a log scan) per message,
  which is what reconciliation did before;
- one pass: `DryRunProvider.find_sent_many`, one scan for all of them;
- end to end: `Dispatcher.reconcile()` on the SQLite outbox (lookups, resends, records).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import update  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from scheduler.core import Core  # noqa: E402
from scheduler.dispatcher import Dispatcher  # noqa: E402
from scheduler.logs import configure_logging  # noqa: E402
from scheduler.models import Message, MessageState  # noqa: E402
from scheduler.providers.base import OutboundMessage, Provider  # noqa: E402
from scheduler.providers.dryrun import DryRunProvider  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from scheduler.simulation import ManualClock  # noqa: E402
from scheduler.store import delivery  # noqa: E402
from tests.factories import add_recipients  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stuck", type=int, default=500)
    parser.add_argument("--log-lines", type=int, default=20000)
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to run on (a scratch database); default: a SQLite file",
    )
    args = parser.parse_args()
    configure_logging("json", "WARNING")
    from benchmarks._db import ScratchDatabases

    with tempfile.TemporaryDirectory() as tmp:
        dbs = ScratchDatabases(Path(tmp), args.database_url)
        try:
            _run(args, Path(tmp), dbs.fresh("reconcile"))
        finally:
            dbs.drop_all()


def _run(args: argparse.Namespace, tmp: Path, url: str) -> None:
    from benchmarks._db import describe

    settings = Settings(
        data_dir=tmp,
        database_url=url,
        config_dir=ROOT / "config",
        templates_dir=ROOT / "templates" / "messages",
        sending_hours="00:00-23:59:59",
    )
    clock = ManualClock(MONDAY + dt.timedelta(minutes=1))
    core = Core(settings, clock=clock)
    add_recipients(core.engine, core.district, args.stuck)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    provider = DryRunProvider(settings.dryrun, settings.dryrun_log_file)
    # Earlier weeks' lines (other message ids), then half the stuck ones "sent" before
    # the crash.
    for i in range(args.log_lines):
        provider.send(OutboundMessage(10_000_000 + i, "13800000000", "x", "mobile", 1))
    stuck = delivery.claim_due(core.engine, now=clock(), limit=args.stuck)
    bodies = delivery.bodies(core.engine, [c.body_id for c in stuck])
    msgs = [OutboundMessage(c.id, c.phone, bodies[c.body_id], c.carrier, c.segments) for c in stuck]
    for m in msgs[::2]:
        provider.send(m)
    lookups = [(m, MONDAY) for m in msgs]

    t = time.perf_counter()
    per_message = Provider.find_sent_many(provider, lookups)
    per_message_s = time.perf_counter() - t
    t = time.perf_counter()
    one_pass = provider.find_sent_many(lookups)
    one_pass_s = time.perf_counter() - t
    provider.close()
    same = [getattr(a, "provider_message_id", None) for a in per_message] == [
        getattr(a, "provider_message_id", None) for a in one_pass
    ]
    found = sum(1 for a in one_pass if a is not None)

    with Session(core.engine) as s, s.begin():
        s.execute(update(Message).values(state=MessageState.SENDING, status_at=clock()))
    clock.set(clock() + dt.timedelta(minutes=10))
    d = Dispatcher(
        core.engine,
        DryRunProvider(settings.dryrun, settings.dryrun_log_file),
        settings,
        clock=clock,
    )
    t = time.perf_counter()
    stats = d.reconcile()
    reconcile_s = time.perf_counter() - t
    d.close()
    core.close()

    print(
        f"{dt.date.today()}; {platform.python_version()}, {describe(args.database_url)}; "
        f"{args.stuck} stuck, log {args.log_lines + args.stuck // 2 + args.stuck % 2} lines "
        f"before the crash"
    )
    print(f"found in the log: {found} (per message and one pass agree: {same})")
    print(f"per message (before): {per_message_s:.2f} s")
    print(f"one pass (after):     {one_pass_s:.3f} s  ({per_message_s / one_pass_s:.0f}x)")
    print(
        f"Dispatcher.reconcile(): {reconcile_s:.2f} s ({stats.by_outcome.get('found', 0)} found "
        f"and recorded sent, {stats.retried} back to the queue)"
    )


if __name__ == "__main__":
    main()
