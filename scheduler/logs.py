"""structlog set-up: pretty on a terminal, JSON lines otherwise; phone numbers masked always."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, WrappedLogger

_PHONE = re.compile(r"(?<!\d)(?:\+?86)?(1\d{2})\d{4}(\d{4})(?!\d)")


def mask_text(text: str) -> str:
    return _PHONE.sub(r"\1****\2", text)


def mask_phones(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Never let an 11-digit mobile number reach a log line, whatever key carries it."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = mask_text(value)
    return event_dict


class _CurrentStderr:
    """Writes to whatever sys.stderr is now, so a CLI progress bar (which redirects it while
    drawn) prints log lines above itself instead of through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(fmt: Literal["auto", "pretty", "json"] = "auto", level: str = "INFO") -> None:
    pretty = sys.stderr.isatty() if fmt == "auto" else fmt == "pretty"
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if pretty
        else structlog.processors.JSONRenderer(ensure_ascii=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_phones,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
