"""POST /api/sends: reported sends over HTTP, the same validation as `pingan sends import`.

`routes(core, authorised)` gives the route; the app adds it beside its other /api routes and
passes its own bearer-token check.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scheduler.core import Core
from scheduler.sends import record_sends


def routes(core: Core, authorised: Callable[[Request], bool]) -> list[Route]:
    async def sends(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"error": "unauthorised"}, status_code=401)
        try:
            data = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(i, dict) for i in items):
            return JSONResponse({"error": "send an object or a list of objects"}, status_code=400)
        result = record_sends(
            core,
            (
                (f"row {i}", {k: "" if v is None else str(v) for k, v in item.items()})
                for i, item in enumerate(items)
            ),
        )
        return JSONResponse(result.to_dict(), status_code=422 if result.rejected else 200)

    return [Route("/api/sends", sends, methods=["POST"])]
