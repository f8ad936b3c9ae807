"""The log chain masks numbers wherever they hide: nested values, exceptions, tracebacks, and
records of the standard library's loggers (uvicorn's, SQLAlchemy's)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
import structlog

from scheduler.logs import configure_logging, get_logger

PHONE = re.compile(r"(?<!\d)(?:\+?86)?1\d{10}(?!\d)")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Handlers here write to this test's captured stderr; later tests must not inherit them."""
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "pingan-masked"]:
        root.removeHandler(handler)


@pytest.mark.parametrize("fmt", ["json", "pretty"])
def test_no_number_in_any_rendering(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt)  # type: ignore[arg-type]
    log = get_logger("scheduler.test")
    try:
        raise RuntimeError("INSERT failed for ('13812345678', '+8613987654321')")
    except RuntimeError as exc:
        log.exception("store.failed", batch={"phones": ["15011112222"]}, error=exc, n=13700001111)
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=exc)
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /x?p=18612345678 HTTP/1.1" 500')
    err = capsys.readouterr().err
    assert "store.failed" in err and "Exception in ASGI application" in err
    assert "138****5678" in err and "139****4321" in err and "186****5678" in err
    assert "150****2222" in err and "137****1111" in err
    assert "Traceback" in err
    assert PHONE.findall(err) == []
