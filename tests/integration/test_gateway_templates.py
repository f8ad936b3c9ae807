"""Gateway template codes (issue 14): the mapping file, the parameters stored on each body at
expansion, and what the dispatcher hands a template-code provider."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.dispatcher import Dispatcher
from scheduler.exceptions import ConfigError, TemplateError
from scheduler.gateway_templates import load_gateway_templates
from scheduler.models import Message, MessageBody, MessageState, Occurrence
from scheduler.providers.base import (
    Accepted,
    OutboundMessage,
    Provider,
    SendError,
    template_code,
)
from scheduler.settings import Settings
from scheduler.simulation import ManualClock
from scheduler.templating import CHANNEL_VARIABLES, Catalogue
from tests.factories import add_recipients

ROOT = Path(__file__).resolve().parents[2]
TZ = ZoneInfo("Asia/Shanghai")
MONDAY = dt.datetime(2022, 10, 10, 9, 0, tzinfo=TZ)


class RecordingGateway(Provider):
    """A template-code provider that records what it was asked to send (no network)."""

    name = "aliyun"
    uses_templates: ClassVar[bool] = True
    max_batch = 10

    def __init__(self, config_dir: Path) -> None:
        self.templates = load_gateway_templates(config_dir)
        self.sent: list[tuple[str, str, dict[str, str], str]] = []
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> RecordingGateway:
        return cls(settings.config_dir)

    def send(self, msg: OutboundMessage) -> Accepted:
        code, params = template_code(msg, self.templates, self.name)
        with self._lock:
            self.sent.append((msg.phone, code, dict(params), msg.body))
        return Accepted(f"rec-{msg.id}")

    def send_batch(self, msgs: Sequence[OutboundMessage]) -> list[Accepted | SendError]:
        return super().send_batch(msgs)

    def find_sent(self, msg: OutboundMessage, since: dt.datetime) -> Accepted | None:
        return None


def _config(tmp_path: Path, mapping: str | None) -> Path:
    folder = tmp_path / "config"
    shutil.copytree(ROOT / "config", folder)
    if mapping is not None:
        (folder / "gateway_templates.yaml").write_text(mapping, encoding="utf-8")
    return folder


def test_sample_mapping_covers_every_sms_template_for_both_gateways(core: Core) -> None:
    mappings = load_gateway_templates(ROOT / "config")
    catalogue: Catalogue = core.catalogue
    sms = [n for n in catalogue.names() if catalogue.get(n).channel == "sms"]
    assert len(sms) > 20
    for gateway in ("aliyun", "tencent"):
        for name in sms:
            mapping = mappings.get(gateway, name)
            assert mapping is not None, (gateway, name)
            info = catalogue.get(name)
            assert mappings.variables(name, gateway) == info.variables
            assert mappings.variables(name, gateway) <= CHANNEL_VARIABLES["sms"]
    # Tencent's parameters are positional: "1", "2", … in order.
    survey = mappings.get("tencent", "survey-notice")
    assert survey is not None
    assert list(survey.params) == [str(i) for i in range(1, len(survey.params) + 1)]


def test_a_bad_expression_is_reported_with_file_line_and_path(tmp_path: Path) -> None:
    folder = _config(
        tmp_path,
        "aliyun:\n  slogan-01:\n    code: SMS_1\n    params:\n"
        '      district: "{{ district_short"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_gateway_templates(folder)
    text = str(caught.value)
    assert str(folder / "gateway_templates.yaml") in text
    assert "line 5: aliyun.slogan-01.params.district: syntax error" in text


def test_a_missing_code_is_reported_with_its_line(tmp_path: Path) -> None:
    folder = _config(tmp_path, "tencent:\n  slogan-01:\n    params: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_gateway_templates(folder)
    assert "line 3: tencent.slogan-01.code: Field required" in str(caught.value)


def test_expansion_stores_each_gateways_params_on_the_body(core: Core) -> None:
    add_recipients(core.engine, core.district, 60)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    with Session(core.engine) as s:
        bodies = s.execute(select(MessageBody.template_name, MessageBody.params)).all()
    assert bodies
    for name, params in bodies:
        assert name.startswith("slogan-")
        short = core.district.district.short_name
        assert json.loads(params or "null") == {
            "aliyun": {"district": short},
            "tencent": {"1": short},
        }


def test_a_parameter_reading_the_town_gives_each_town_its_own_body(
    tmp_path: Path, settings: Settings
) -> None:
    """slogan-xx's text does not use the town, but the gateway template does: the town must
    split the bodies (else every town would be sent the first town's name)."""
    lines = ["aliyun:"]
    for i in range(1, 13):
        lines += [f"  slogan-{i:02d}:", f"    code: SMS_{i}", "    params:"]
        lines += ['      district: "{{ district_short }}"', '      town: "{{ town }}"']
    folder = _config(tmp_path, "\n".join(lines) + "\n")
    core = Core(settings.model_copy(update={"config_dir": folder}))
    try:
        add_recipients(core.engine, core.district, 200)
        core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
        with Session(core.engine) as s:
            rows = s.execute(
                select(MessageBody.params, Message.town_id).join(
                    Message, Message.body_id == MessageBody.id
                )
            ).all()
        towns = {t.id: t.name for t in core.district.towns}
        assert len({town for _, town in rows}) > 1
        for params, town_id in rows:
            assert json.loads(params or "null")["aliyun"]["town"] == towns[town_id]
    finally:
        core.close()


def test_a_failing_parameter_is_a_render_error_naming_the_mapping(
    tmp_path: Path, settings: Settings
) -> None:
    folder = _config(
        tmp_path, 'aliyun:\n  slogan-01:\n    code: SMS_1\n    params:\n      x: "{{ nope }}"\n'
    )
    mappings = load_gateway_templates(folder)
    with pytest.raises(TemplateError, match=r"gateway_templates.yaml:5: aliyun.slogan-01"):
        mappings.render("slogan-01", {"district_short": "上虞"})


def test_the_dispatcher_hands_the_provider_template_and_its_params(core: Core) -> None:
    clock = ManualClock(MONDAY + dt.timedelta(minutes=5))
    core.clock = clock
    add_recipients(core.engine, core.district, 40)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    provider = RecordingGateway(core.settings.config_dir)
    d = Dispatcher(core.engine, provider, core.settings, clock=clock)
    stats = d.run(until_empty=True)
    d.close()
    assert stats.sent == 40
    mappings = load_gateway_templates(core.settings.config_dir)
    with Session(core.engine) as s:
        name = s.scalars(select(MessageBody.template_name)).first()
    assert name is not None
    code = mappings.get("aliyun", name)
    assert code is not None
    short = core.district.district.short_name
    assert {(c, tuple(p.items())) for _, c, p, _ in provider.sent} == {
        (code.code, (("district", short),))
    }
    # The text (signature included) still travels with the message.
    assert all(body.startswith(core.district.district.signature) for *_, body in provider.sent)


def test_a_template_without_a_code_halts_the_campaign(tmp_path: Path, settings: Settings) -> None:
    """Expanded before the mapping existed: the provider refuses, the occurrence is paused,
    nothing fails or is sent."""
    core = Core(settings.model_copy(update={"config_dir": _config(tmp_path, "{}\n")}))
    try:
        clock = ManualClock(MONDAY + dt.timedelta(minutes=5))
        core.clock = clock
        add_recipients(core.engine, core.district, 20)
        occ = core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
        provider = RecordingGateway(core.settings.config_dir)
        d = Dispatcher(core.engine, provider, core.settings, clock=clock)
        stats = d.run(until_empty=True, max_wait=0)
        d.close()
        assert provider.sent == []
        assert stats.halted >= 1 and stats.failed == 0 and stats.sent == 0
        with Session(core.engine) as s:
            paused = s.get(Occurrence, occ.occurrence_id)
            assert paused is not None and paused.paused
            states = set(s.scalars(select(Message.state)))
            errors = set(s.scalars(select(Message.error_code)))
        assert states == {MessageState.QUEUED}
        assert errors == {"NO_TEMPLATE"}
    finally:
        core.close()
