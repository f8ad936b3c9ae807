"""The console served for real: a FastAPI app with `mount_console`, on uvicorn on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI

from scheduler.console import mount_console
from scheduler.core import Core
from scheduler.settings import Settings


@dataclass(frozen=True)
class Console:
    core: Core
    app: FastAPI
    base: str

    def client(self) -> httpx.Client:
        """A browser-like client: keeps cookies, does not follow redirects."""
        return httpx.Client(base_url=self.base, follow_redirects=False, timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_console(settings: Settings) -> Iterator[Console]:
    core = Core(settings)
    core.engine  # noqa: B018 - upgrade the schema before the first request
    app = FastAPI()
    mount_console(app, core)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Console(core, app, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        core.close()
