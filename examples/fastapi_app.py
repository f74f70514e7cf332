"""An existing FastAPI app, with its own session cookies, whose slow endpoint now returns a job.

``POST /cases/{case_id}/analyze`` used to run the analysis inside the request (a minute;
the platform cuts requests at 30 s). Now it answers ``202`` with the job and a
``Location`` on jobstream's API, mounted at ``/jobstream`` in this same app; the page at
``/`` follows the job there (SSE, polling as a fallback) with the same session cookie,
because jobstream asks this app who is calling (``authenticate=``). Run::

    JOBSTREAM_TASK_MODULES=examples.case_tasks uv run python -m workers &
    JOBSTREAM_TASK_MODULES=examples.case_tasks uv run uvicorn examples.fastapi_app:app --port 8001

(Redis from ``JOBSTREAM_REDIS_URL``, default ``redis://127.0.0.1:6379/0``; ``./run dev``
prints the one it started.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from broker import Jobstream, QuotaExceeded
from examples.case_tasks import AnalyzeCase, analyze_case
from examples.sessions import Sessions
from web import User, create_app, jobstream_of

JOBSTREAM_MOUNT = "/jobstream"
sessions = Sessions.from_env()


def jobstream_caller(connection: Any) -> User | None:
    """jobstream's question "who is calling?", answered from this app's own session cookie."""
    user = sessions.user(connection.cookies.get(sessions.cookie))
    return None if user is None else User(id=user)


jobstream_api = create_app(authenticate=jobstream_caller)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the mounted jobstream app's lifespan inside this app's (FastAPI never runs a mounted
    app's own), and keep its ``Jobstream`` for this app's endpoints: one Redis pool in all."""
    async with jobstream_api.lifespan():
        app.state.jobs = await jobstream_of(jobstream_api)
        yield


app = FastAPI(lifespan=lifespan)
app.mount(JOBSTREAM_MOUNT, jobstream_api)  # type: ignore[arg-type]  # same ASGI, typed apart by each framework


def current_user(request: Request) -> str:
    """This app's auth, as it was before jobstream: a signed session cookie."""
    user = sessions.user(request.cookies.get(sessions.cookie))
    if user is None:
        raise HTTPException(401, "log in first")
    return user


class Login(BaseModel):
    user: str
    password: str


@app.post("/login", status_code=204)
def login(body: Login, response: Response) -> None:
    if not sessions.check_password(body.user, body.password):
        raise HTTPException(401, "wrong user or password")
    response.set_cookie(sessions.cookie, sessions.sign(body.user), httponly=True, samesite="lax")


@app.post("/cases/{case_id}/analyze", status_code=202)
async def analyze(case_id: str, request: Request, user: Annotated[str, Depends(current_user)]) -> Response:
    """Was: run the analysis here. Now: create the job for this user and answer at once."""
    jobs: Jobstream = request.app.state.jobs
    try:
        case = AnalyzeCase(case_id=case_id)
        job = await jobs.submit(analyze_case, case, owner=user, labels={"case": case_id})
    except QuotaExceeded:
        raise HTTPException(429, "too many analyses running", headers={"Retry-After": "5"}) from None
    return Response(
        msgspec.json.encode(job),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"{JOBSTREAM_MOUNT}/jobs/{job.id}"},
    )


@app.get("/", response_class=HTMLResponse)
def page() -> str:
    """The frontend: log in, start an analysis, follow it with jobstream.js."""
    return (Path(__file__).parent / "frontend.html").read_text(encoding="utf-8")
