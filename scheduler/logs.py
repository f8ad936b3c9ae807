"""structlog set-up: pretty on a terminal, JSON lines otherwise; phone numbers masked always.

Our own events and every standard-library logger (uvicorn's access and error logs, SQLAlchemy,
APScheduler) go through the same processors, and masking runs after exceptions are rendered:
a traceback quoting SQL parameters or a request body shows 138****5678, never the number.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from scheduler.phones import mask_in_text

_HANDLER_NAME = "pingan-masked"


def mask_text(text: str) -> str:
    return mask_in_text(text)


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        text = str(value)
        masked = mask_text(text)
        return value if masked == text else masked
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(v) for v in value]
    if isinstance(value, BaseException):
        return mask_text(f"{value.__class__.__name__}: {value}")
    return value


def mask_phones(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Never let an 11-digit mobile number reach a log line, whatever key carries it."""
    for key, value in event_dict.items():
        if key in ("_record", "_from_structlog", "exc_info"):
            continue
        event_dict[key] = _masked(value)
    return event_dict


class _CurrentStderr:
    """Writes to whatever sys.stderr is now, so a CLI progress bar (which redirects it while
    drawn) prints log lines above itself instead of through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _foreign_logger_name(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    if record is not None:
        event_dict["logger"] = record.name
    return event_dict


def _shared_processors() -> list[Processor]:
    """Up to rendering, for our events and foreign (stdlib) records alike; mask comes last."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _foreign_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        mask_phones,
    ]


def _renderer(pretty: bool) -> Processor:
    if pretty:
        return structlog.dev.ConsoleRenderer()
    return structlog.processors.JSONRenderer(ensure_ascii=False)


def _install_stdlib_handler(pretty: bool, level: int = logging.INFO) -> None:
    """Route the root logger (so uvicorn's and every library's) through the masked chain."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _renderer(pretty)],
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # uvicorn's access lines are INFO; its error logger carries tracebacks.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(level)


def ensure_logging() -> None:
    """The masked chain for structlog and the root logger, if `configure_logging` has not
    been called (an HTTP server started by a script or a test must not log numbers either)."""
    if not structlog.is_configured():
        configure_logging("json")
    elif not any(h.get_name() == _HANDLER_NAME for h in logging.getLogger().handlers):
        _install_stdlib_handler(pretty=False)


def configure_logging(fmt: Literal["auto", "pretty", "json"] = "auto", level: str = "INFO") -> None:
    pretty = sys.stderr.isatty() if fmt == "auto" else fmt == "pretty"
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[*_shared_processors(), _renderer(pretty)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    _install_stdlib_handler(pretty, numeric)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
