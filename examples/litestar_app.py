"""An existing Litestar app, with its own bearer sessions, whose slow endpoint now returns a job.

The same change as in :mod:`examples.fastapi_app`, for a Litestar app whose frontend sends
``Authorization: Bearer <session>`` (a single-page app, often on another origin: set
``JOBSTREAM_CORS_ORIGINS``). jobstream's API is mounted at ``/jobstream``; it asks this app
who is calling (``authenticate=``), so the frontend polls ``Location`` with its usual
header, and opens the job's SSE stream with the ``stream_token`` it gets from
``POST /jobstream/jobs/{id}/stream-token`` (an ``EventSource`` cannot send headers). Run::

    JOBSTREAM_TASK_MODULES=examples.case_tasks uv run python -m workers &
    JOBSTREAM_TASK_MODULES=examples.case_tasks uv run uvicorn examples.litestar_app:app --port 8002
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, asgi, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.types import Receive, Scope, Send

from broker import Jobstream, QuotaExceeded
from examples.case_tasks import AnalyzeCase, analyze_case
from examples.sessions import Sessions
from web import User, create_app, jobstream_of

JOBSTREAM_MOUNT = "/jobstream"
sessions = Sessions.from_env()


def session_user(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """This app's auth, as it was before jobstream: ``Authorization: Bearer <session>``."""
    scheme, _, value = connection.headers.get("authorization", "").partition(" ")
    return sessions.user(value) if scheme.lower() == "bearer" else None


def jobstream_caller(connection: ASGIConnection[Any, Any, Any, Any]) -> User | None:
    """jobstream's question "who is calling?", answered by this app's own sessions."""
    user = session_user(connection)
    return None if user is None else User(id=user)


jobstream_api = create_app(authenticate=jobstream_caller)


@asgi(JOBSTREAM_MOUNT, is_mount=True, copy_scope=True)
async def jobstream_routes(scope: Scope, receive: Receive, send: Send) -> None:
    """jobstream's API under ``/jobstream``. Litestar hands a mount the rest of the path; the
    ``root_path`` tells jobstream its prefix, for the ``Location`` and stream URLs it gives out."""
    scope["root_path"] = scope.get("root_path", "") + JOBSTREAM_MOUNT
    await jobstream_api(scope, receive, send)


class Login(msgspec.Struct):
    user: str
    password: str


@post("/login", status_code=200)
async def login(data: Login) -> dict[str, str]:
    """Exchange a password for this app's bearer session."""
    if not sessions.check_password(data.user, data.password):
        raise NotAuthorizedException("wrong user or password")
    return {"token": sessions.sign(data.user)}


@post("/cases/{case_id:str}/analyze", status_code=202)
async def analyze(case_id: str, request: Request[Any, Any, Any]) -> Response[bytes]:
    """Was: run the analysis here. Now: create the job for this user and answer at once."""
    user = session_user(request)
    if user is None:
        raise NotAuthorizedException("log in first")
    jobs: Jobstream = request.app.state.jobs
    try:
        case = AnalyzeCase(case_id=case_id)
        job = await jobs.submit(analyze_case, case, owner=user, labels={"case": case_id})
    except QuotaExceeded:
        raise TooManyRequestsException("too many analyses running", headers={"Retry-After": "5"}) from None
    return Response(
        msgspec.json.encode(job),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"{JOBSTREAM_MOUNT}/jobs/{job.id}"},
    )


@asynccontextmanager
async def jobstream_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Run the mounted app's lifespan in this one's, and keep its ``Jobstream`` for ``analyze``."""
    async with jobstream_api.lifespan():
        app.state.jobs = await jobstream_of(jobstream_api)
        yield


app = Litestar(route_handlers=[login, analyze, jobstream_routes], lifespan=[jobstream_lifespan])
