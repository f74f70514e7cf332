"""Host apps that mount jobstream under ``/api``, as an adopter's existing app would.

Run by uvicorn in the mounting tests (``--factory tests.support.mount_host:<name>``); each
host has its own ``/health`` and reads the ``JOBSTREAM_*`` environment the test set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from web import close_resources, create_app


def fastapi_without_lifespan() -> FastAPI:
    """FastAPI never runs the mounted app's lifespan: jobstream opens on its first request,
    and the host closes it at its own shutdown."""
    api = create_app()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await close_resources(api)

    host = FastAPI(lifespan=lifespan)

    @host.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    host.mount("/api", api)
    return host


def starlette_with_chained_lifespan() -> Starlette:
    """Starlette's ``Mount`` with jobstream's lifespan run inside the host's own."""
    api = create_app()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with api.lifespan():
            yield

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/health", health), Mount("/api", app=api)], lifespan=lifespan)
