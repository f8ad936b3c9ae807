"""The web console (issue 13): server-rendered pages in Chinese for district and town staff.

`mount_console(app, core)` adds its session middleware, static files and pages to a FastAPI app.
"""

from scheduler.console.app import mount_console

__all__ = ["mount_console"]
