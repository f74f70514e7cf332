"""The ceiling for the HTTP scenarios: bare Litestar endpoints returning a small JSON.

``python -m uvicorn bench.bare_app:app`` with the same options as the jobstream web
process. No Redis, no auth, no validation: what Litestar and uvicorn cost by themselves.
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, Request, get, post


class Small(msgspec.Struct):
    """About the size of a small job reply's first fields."""

    id: str
    status: str


_REPLY = Small(id="00000000-0000-4000-8000-000000000000", status="PENDING")


@get("/ping")
async def ping() -> Small:
    """GET: the ceiling for ``GET /jobs/{id}``."""
    return _REPLY


@post("/jobs", status_code=202)
async def create(request: Request[None, None, None]) -> Small:
    """POST with the same body as ``POST /jobs``, read and dropped: the ceiling for creation."""
    await request.body()
    return _REPLY


app = Litestar(route_handlers=[ping, create])
