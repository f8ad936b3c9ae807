"""Replies read as people write them: the corpus, the rules file, and the real webhook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.core import Core
from scheduler.exceptions import ConfigError
from scheduler.models import Message, MessageState, OptOut
from scheduler.replies import classify, load_reply_rules, normalise
from tests.factories import add_recipients
from tests.integration.test_web import MONDAY, _signed, web  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[2]
CORPUS: list[dict[str, Any]] = yaml.safe_load(
    (ROOT / "tests" / "data" / "replies.yaml").read_text(encoding="utf-8")
)
RULES = load_reply_rules(ROOT / "config")


def test_the_corpus_is_large_and_balanced() -> None:
    outcomes = [c["opt_out"] for c in CORPUS]
    assert len(CORPUS) >= 60
    assert outcomes.count(True) >= 25 and outcomes.count(False) >= 25
    assert len({c["text"] for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[repr(c["text"]) for c in CORPUS])
def test_reply_corpus(case: dict[str, Any]) -> None:
    verdict = classify(case["text"], RULES)
    assert verdict.opt_out is case["opt_out"], verdict


def test_normalisation_folds_width_case_punctuation_and_emoji() -> None:
    assert normalise("  ＳＴＯＰ， Please!! 🙏") == "stop please"
    assert normalise("回T退订。") == "回 t 退订"


def _rules_file(tmp_path: Path, text: str) -> Path:
    (tmp_path / "replies.yaml").write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("keywords: []\n", "keywords"),
        ("keywords: [T]\nphrases: [STOP]\n", "phrases[0]"),
        ("keywords: ['stop please']\n", "keywords[0]"),
        ("keywords: [T]\nkeyword: [TD]\n", "keyword"),
        ("keywords: [T]\nphrases: ['。']\n", "phrases[0]"),
        ("keywords: [T\n", "line 2"),
    ],
)
def test_a_bad_rules_file_names_file_field_and_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_reply_rules(_rules_file(tmp_path, text))
    message = str(err.value)
    assert "replies.yaml" in message and expected in message, message


def test_configured_rules_are_the_ones_applied(tmp_path: Path) -> None:
    rules = load_reply_rules(_rules_file(tmp_path, "keywords: [QUIT]\nphrases: [闭嘴]\n"))
    assert classify("quit.", rules).opt_out
    assert classify("你们闭嘴吧", rules).opt_out
    assert not classify("T", rules).opt_out
    extra = load_reply_rules(tmp_path, ["ENDE"])
    assert classify("Ende bitte", extra).opt_out


def test_a_refusal_through_the_real_webhook_cancels_what_is_queued(
    web: tuple[Core, str],  # noqa: F811
) -> None:
    core, base = web
    add_recipients(core.engine, core.district, 6)
    core.planner().fire_scheduled(core.campaigns.get("weekly-antifraud"), MONDAY)
    path = "/webhooks/twilio/inbound"
    replies = {
        "+8613800000000": "ＴＤ。",  # full-width, with a full stop
        "8618600000001": "退订 谢谢",
        "+8613800000003": "好的，收到",
        "+8618600000004": "TEST",
    }
    for phone, body in replies.items():
        form = {"From": phone, "Body": body, "MessageSid": "SM" + phone[-4:]}
        r = httpx.post(base + path, data=form, headers=_signed(path, form))
        assert r.status_code == 200
    forged = {"From": "+8618900000002", "Body": "T", "MessageSid": "SMforged"}
    r = httpx.post(base + path, data=forged, headers=_signed(path, forged, "wrong-token"))
    assert r.status_code == 403
    with Session(core.engine) as s:
        opt_outs = {o.phone: o for o in s.scalars(select(OptOut))}
        messages = {m.phone: m for m in s.scalars(select(Message))}
    assert set(opt_outs) == {"13800000000", "18600000001"}
    assert opt_outs["13800000000"].reply_text == "ＴＤ。"
    assert opt_outs["13800000000"].reason == "keyword:td"
    assert opt_outs["18600000001"].reply_text == "退订 谢谢"
    assert opt_outs["18600000001"].source == "reply"
    for phone in ("13800000000", "18600000001"):
        assert messages[phone].state == MessageState.CANCELLED
        assert messages[phone].error_code == "opted_out"
    for phone in ("18900000002", "13800000003", "18600000004", "18900000005"):
        assert messages[phone].state == MessageState.QUEUED
