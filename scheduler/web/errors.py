"""The error bodies of the API: 422 names the field and the reason, others say why."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from scheduler.logs import mask_text


def unprocessable(loc: Sequence[str | int], msg: str, kind: str = "value_error") -> JSONResponse:
    """A 422 in FastAPI's validation shape, for errors found past the models (unknown town…)."""
    return JSONResponse(
        {"detail": [{"loc": list(loc), "msg": mask_text(msg), "type": kind}]}, status_code=422
    )


def field_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic's errors without the input they quote (it may be personal data, or huge)."""
    return [
        {
            "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            "msg": mask_text(str(e.get("msg", ""))),
            "type": str(e.get("type", "value_error")),
        }
        for e in errors
    ]
