"""Reading residents' replies as people write them: is this a refusal?

The rules live in config/replies.yaml (see the comments there). A reply is normalised (NFKC,
case-folded; punctuation, symbols, emoji and spaces become word breaks, and so does a change
between Latin letters and Chinese characters), then it is a refusal when it equals a keyword,
starts with one as a separate word, or contains a refusal phrase. Matching on words, not
substrings, is what keeps TEST, STOPWATCH and 退税 from opting anyone out.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from scheduler.config import parse_model, read_yaml

REPLIES_FILE = "replies.yaml"


def _is_word_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LN"


def _is_latin(ch: str) -> bool:
    return ch.isascii()


def words(text: str) -> list[str]:
    """The reply's words after NFKC and case-folding; everything but letters and digits breaks
    words, and so does a switch between ASCII and other letters (`T谢谢` is `t`, `谢谢`)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    current: list[str] = []
    for ch in folded:
        if not _is_word_char(ch):
            if current:
                out.append("".join(current))
                current = []
            continue
        if current and _is_latin(current[-1]) != _is_latin(ch):
            out.append("".join(current))
            current = []
        current.append(ch)
    if current:
        out.append("".join(current))
    return out


def normalise(text: str) -> str:
    """The reply as its words joined by single spaces (what the rules are matched against)."""
    return " ".join(words(text))


def _keyword(value: str) -> str:
    norm = normalise(value)
    if not norm:
        raise ValueError(f"keyword {value!r} has no letters or characters")
    if " " in norm:
        raise ValueError(f"keyword {value!r} must be one word (put phrases under phrases)")
    return norm


def _phrase(value: str) -> str:
    norm = normalise(value)
    if not norm:
        raise ValueError(f"phrase {value!r} has no letters or characters")
    if any(ch.isascii() and ch.isalnum() for ch in norm):
        # Found anywhere, a Latin word would match inside others (STOP in STOPWATCH).
        raise ValueError(f"phrase {value!r} has Latin letters or digits: list it as a keyword")
    return norm.replace(" ", "")


Keyword = Annotated[str, AfterValidator(_keyword)]
Phrase = Annotated[str, AfterValidator(_phrase)]


class ReplyRules(BaseModel):
    """config/replies.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The whole reply, or its first word.
    keywords: tuple[Keyword, ...] = Field(min_length=1)
    # Anywhere in the reply (after `not_refusals` are taken out).
    phrases: tuple[Phrase, ...] = ()
    not_refusals: tuple[Phrase, ...] = ()


@dataclass(frozen=True)
class ReplyVerdict:
    opt_out: bool
    # What matched, e.g. "keyword:td" or "phrase:退订"; recorded as the opt-out's reason.
    rule: str | None
    normalised: str


def classify(text: str, rules: ReplyRules) -> ReplyVerdict:
    """Whether this reply refuses further messages, and which rule said so."""
    ws = words(text)
    norm = " ".join(ws)
    if ws and ws[0] in rules.keywords:
        return ReplyVerdict(True, f"keyword:{ws[0]}", norm)
    # Phrases are Chinese: spaces between the characters do not matter (退 订).
    joined = "".join(ws)
    for exception in rules.not_refusals:
        joined = joined.replace(exception, "|")
    for phrase in rules.phrases:
        if phrase in joined:
            return ReplyVerdict(True, f"phrase:{phrase}", norm)
    return ReplyVerdict(False, None, norm)


# Used when a config folder has no replies.yaml (one made before the file existed).
DEFAULT_RULES = ReplyRules(
    keywords=("T", "TD", "STOP", "UNSUBSCRIBE", "退订", "取消", "拒收", "退"),
    phrases=(
        *("退订", "拒收", "勿发", "不要再发", "不要发"),
        *("别再发", "别发了", "请勿再发", "不再接收"),
    ),
    not_refusals=("不退订", "不用退订", "不想退订", "不要退订", "不需要退订"),
)


def load_reply_rules(config_dir: Path, extra_keywords: Sequence[str] = ()) -> ReplyRules:
    """The rules from config/replies.yaml (ConfigError naming file, field and reason when
    invalid), plus keywords given in PINGAN_OPT_OUT_KEYWORDS."""
    path = config_dir / REPLIES_FILE
    rules = parse_model(path, ReplyRules, read_yaml(path)) if path.exists() else DEFAULT_RULES
    if extra_keywords:
        merged = parse_model(
            path,
            ReplyRules,
            {**rules.model_dump(), "keywords": [*rules.keywords, *extra_keywords]},
        )
        return merged
    return rules
