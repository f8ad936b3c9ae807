"""An opt-out is final at once: queued and retrying messages cancelled with it, the claim never
hands an opted-out number to a provider, and one landing after the claim is still honoured."""

from __future__ import annotations

import datetime as dt
import threading
import time
from zoneinfo import ZoneInfo

from pydantic import SecretStr
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.dispatcher import Dispatcher
from scheduler.models import (
    Attempt,
    Message,
    MessageState,
    Occurrence,
    OccurrenceState,
    OptOut,
)
from scheduler.providers import make_provider
from scheduler.settings import DispatchSettings, TwilioSettings
from scheduler.simulation import ManualClock
from scheduler.store import delivery
from scheduler.store.delivery import Outcome
from scheduler.store.recipients import record_opt_outs, record_opt_outs_counted
from scheduler.testing.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeConfig, running_fake_twilio
from tests.factories import add_recipients

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 31, 9, 0, tzinfo=TZ)


def _two_occurrences(core: Core, n: int) -> tuple[int, int]:
    """Every resident gets the weekly SMS and the survey notice."""
    add_recipients(core.engine, core.district, n)
    planner = core.planner()
    weekly = planner.fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    survey = planner.fire_scheduled(
        core.campaigns.get("survey-notice"), MONDAY + dt.timedelta(hours=1)
    )
    return weekly.occurrence_id, survey.occurrence_id


def _messages(core: Core, phone: str) -> dict[int, tuple[MessageState, str | None]]:
    with Session(core.engine) as s:
        rows = s.execute(
            select(Message.occurrence_id, Message.state, Message.error_code).where(
                Message.phone == phone
            )
        ).all()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_opt_out_cancels_queued_and_retrying_but_not_sending(core: Core) -> None:
    weekly, survey = _two_occurrences(core, 12)
    a, b, c = "13800000000", "18600000001", "18900000002"
    later = MONDAY + dt.timedelta(hours=3)
    with Session(core.engine) as s, s.begin():
        # a: the weekly SMS is with the provider; the survey notice waits for a retry.
        s.execute(
            update(Message)
            .where(Message.phone == a, Message.occurrence_id == weekly)
            .values(state=MessageState.SENDING, attempts=1, status_at=MONDAY)
        )
        s.execute(
            update(Message)
            .where(Message.phone == a, Message.occurrence_id == survey)
            .values(attempts=2, next_attempt_at=later, error_code="20429")
        )
    new, cancelled = record_opt_outs_counted(
        core.engine, [a, b], source="cli", reason="电话投诉", now=core.clock()
    )
    assert (new, cancelled) == (2, 3)
    assert _messages(core, a) == {
        weekly: (MessageState.SENDING, None),
        survey: (MessageState.CANCELLED, "opted_out"),
    }
    assert _messages(core, b) == {
        weekly: (MessageState.CANCELLED, "opted_out"),
        survey: (MessageState.CANCELLED, "opted_out"),
    }
    assert set(_messages(core, c).values()) == {(MessageState.QUEUED, None)}
    # Recording it again changes nothing and cancels nothing more.
    assert record_opt_outs_counted(core.engine, [a], source="api", now=core.clock()) == (0, 0)

    # The one `sending` keeps its fate: if the provider says "try later", it is cancelled then.
    with Session(core.engine) as s:
        row = s.execute(
            select(*delivery._CLAIMED).where(Message.phone == a, Message.occurrence_id == weekly)
        ).one()
    claimed = delivery.Claimed(*row)
    delivery.record_outcomes(
        core.engine,
        [
            Outcome(
                claimed,
                MessageState.QUEUED,
                later,
                "transient",
                "dryrun",
                error_code="20429",
                next_attempt_at=later,
            )
        ],
        tz=TZ,
    )
    assert _messages(core, a)[weekly] == (MessageState.CANCELLED, "opted_out")
    with Session(core.engine) as s:
        # The provider call happened, so its attempt is on record.
        assert s.scalar(select(func.count()).select_from(Attempt)) == 1


def test_the_claim_cancels_opted_out_numbers_it_meets_and_never_returns_them(core: Core) -> None:
    _two_occurrences(core, 10)
    opted = {"13800000000", "18900000005"}
    # As if an expansion had queued them after the refusal committed (the race the claim closes).
    with Session(core.engine) as s, s.begin():
        s.execute(
            insert(OptOut),
            [{"phone": p, "source": "reply", "created_at": MONDAY} for p in opted],
        )
    now = MONDAY + dt.timedelta(hours=2)
    first = delivery.claim_batch(core.engine, now=now, limit=12)
    # The survey's 10 (two of them opted out), then the weekly SMS of residents 0 and 1.
    assert first.cancelled == 3
    assert len(first.claimed) == 9
    rest = delivery.claim_batch(core.engine, now=now, limit=100)
    assert rest.cancelled == 1 and len(rest.claimed) == 7
    handed = [c.phone for c in first.claimed + rest.claimed]
    assert not opted & set(handed)
    assert len(handed) == 16
    with Session(core.engine) as s:
        cancelled = s.execute(
            select(Message.phone, Message.attempts, Message.error_code).where(
                Message.state == MessageState.CANCELLED
            )
        ).all()
    assert sorted(r[0] for r in cancelled) == sorted([*opted, *opted])
    assert {(r[1], r[2]) for r in cancelled} == {(0, "opted_out")}


def test_dispatch_drains_around_opt_outs_and_finishes_the_occurrences(core: Core) -> None:
    clock = ManualClock(MONDAY + dt.timedelta(hours=2))
    core.clock = clock
    weekly, survey = _two_occurrences(core, 30)
    record_opt_outs(core.engine, ["13800000000", "18600000001"], source="api", now=core.clock())
    with Session(core.engine) as s, s.begin():
        s.execute(insert(OptOut), [{"phone": "18900000002", "source": "x", "created_at": MONDAY}])
    d = Dispatcher(core.engine, make_provider(core.settings), core.settings, clock=clock)
    stats = d.run(until_empty=True)
    d.close()
    assert stats.sent == 54
    assert stats.cancelled == 2  # the two met by the claim; the others were cancelled before
    with Session(core.engine) as s:
        states = dict(s.execute(select(Message.state, func.count()).group_by(Message.state)).all())
        occ = {o.id: o.state for o in s.scalars(select(Occurrence))}
    assert states[MessageState.CANCELLED] == 6
    assert occ == {weekly: OccurrenceState.DONE, survey: OccurrenceState.DONE}
    log = core.settings.dryrun_log_file.read_text(encoding="utf-8")
    assert log.count("\n") == 54
    assert delivery.unfinished(core.engine) == {"queued": 0, "retrying": 0, "sending": 0}


def test_an_opt_out_landing_after_the_claim_is_honoured_before_the_send(core: Core) -> None:
    """A slow, rate-limited batch: the refusal commits while the batch is `sending`."""
    clock = ManualClock(MONDAY + dt.timedelta(hours=2))
    core.clock = clock
    add_recipients(core.engine, core.district, 15)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    settings = core.settings.model_copy(
        update={
            "dispatch": DispatchSettings(rate_per_second=5, concurrency=1, batch_size=15),
            "dryrun": core.settings.dryrun.model_copy(update={"rate_limited": True}),
        }
    )
    last = "18900000014"  # the batch's last message, sent about 2 s after the claim

    def refuse_once_claimed() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with Session(core.engine) as s:
                if s.scalar(select(Message.state).where(Message.phone == last)) == "sending":
                    break
            time.sleep(0.02)
        record_opt_outs(core.engine, [last], source="reply", reason="keyword:t", now=core.clock())

    refuser = threading.Thread(target=refuse_once_claimed)
    refuser.start()
    d = Dispatcher(core.engine, make_provider(settings), settings, clock=clock)
    stats = d.run(until_empty=True)
    d.close()
    refuser.join()
    assert stats.sent == 14 and stats.cancelled == 1
    assert _messages(core, last) == {1: (MessageState.CANCELLED, "opted_out")}
    assert last[-4:] not in core.settings.dryrun_log_file.read_text(encoding="utf-8")
    with Session(core.engine) as s:
        mid = s.scalar(select(Message.id).where(Message.phone == last))
        assert s.scalar(select(func.count()).where(Attempt.message_id == mid)) == 0
        assert s.scalar(select(Message.attempts).where(Message.id == mid)) == 0


def test_a_provider_refusal_opts_out_and_cancels_the_rest_in_one_go(core: Core) -> None:
    """Twilio (the fake, through the real client) answers 21610 for every number."""
    clock = ManualClock(MONDAY + dt.timedelta(hours=2))
    core.clock = clock
    weekly, survey = _two_occurrences(core, 6)
    with running_fake_twilio(FakeConfig(permanent={"21610": 1.0})) as fake:
        settings = core.settings.model_copy(
            update={
                "provider": "twilio",
                "twilio": TwilioSettings(
                    account_sid=ACCOUNT_SID,
                    auth_token=SecretStr(AUTH_TOKEN),
                    messaging_service_sid="MG" + "1" * 32,
                    base_url=fake.base_url,
                ),
                # The survey notices (priority 10) make the first batch.
                "dispatch": DispatchSettings(batch_size=6, concurrency=2),
            }
        )
        d = Dispatcher(core.engine, make_provider(settings), settings, clock=clock)
        stats = d.run(until_empty=True)
        d.close()
        assert fake.created_count() == 0
    assert stats.opted_out == 6 and stats.cancelled == 0 and stats.claimed == 6
    for i, prefix in enumerate(("138", "186", "189", "138", "186", "189")):
        assert _messages(core, f"{prefix}{i:08d}") == {
            survey: (MessageState.FAILED, "21610"),
            weekly: (MessageState.CANCELLED, "opted_out"),
        }
    with Session(core.engine) as s:
        opt_outs = list(s.scalars(select(OptOut)))
        occ = set(s.scalars(select(Occurrence.state)))
    assert len(opt_outs) == 6
    assert {(o.source, o.reason) for o in opt_outs} == {("provider", "error 21610")}
    assert occ == {OccurrenceState.DONE}
