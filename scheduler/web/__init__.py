"""The HTTP layer: `create_app` builds the FastAPI app, `HttpServer` runs it in `pingan run`."""

from scheduler.web.app import HttpServer, create_app

__all__ = ["HttpServer", "create_app"]
