"""`python -m scheduler.console`: the console alone on PINGAN_HTTP_HOST:PINGAN_HTTP_PORT.

For trying the pages before they are mounted into the service's own app (`pingan run`).
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from scheduler.console.app import mount_console
from scheduler.core import Core
from scheduler.logs import configure_logging
from scheduler.settings import load_settings


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    core = Core(settings)
    core.engine  # noqa: B018 - upgrade the schema before serving
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    mount_console(app, core)
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning")


if __name__ == "__main__":
    main()
