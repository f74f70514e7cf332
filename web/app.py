"""The Litestar app: ``web.app:app`` for an ASGI server, :func:`create_app` for tests and mounts.

``app`` is built on first access from the ``JOBSTREAM_*`` environment, so importing this
module never fails; a misconfiguration (JWT auth without a secret) fails when the server
loads ``app``, before it serves anything.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Litestar, Request, Response, Router, route
from litestar.enums import HttpMethod

from broker.registry import load_task_modules
from broker.settings import Settings, load_settings
from web.auth import auth_hook
from web.live.sse import ROUTES as SSE_ROUTES
from web.log_redaction import install_log_redaction
from web.openapi import RawJsonSchemaPlugin, finalize_openapi, openapi_config
from web.problems import EXCEPTION_HANDLERS
from web.resources import Opened, dependencies, lifespan, stream_tokens_for
from web.routes.admin import ROUTES as ADMIN_ROUTES
from web.routes.dashboard import ROUTES as DASHBOARD_ROUTES
from web.routes.health import healthz, readyz
from web.routes.jobs import JobController
from web.routes.task_catalog import list_tasks


def normalize_prefix(path_prefix: str) -> str:
    """``"api/v1/"`` -> ``"/api/v1"``; ``""`` or ``"/"`` -> ``""`` (no prefix)."""
    stripped = path_prefix.strip().strip("/")
    return f"/{stripped}" if stripped else ""


@route(JobController.path, http_method=HttpMethod.OPTIONS, include_in_schema=False, sync_to_thread=False)
def jobs_options(request: Request[Any, Any, Any]) -> Response[None]:
    """``OPTIONS /jobs``: 204 with every method the path answers.

    Litestar makes the OPTIONS answer of a path when it first registers a handler there,
    and keeps that one when more handlers join the path, so its ``Allow`` named POST and
    not GET.
    """
    methods = request.app.route_handler_method_map.get(request.url.path, {})
    return Response(None, status_code=204, headers={"Allow": ", ".join(sorted(methods))})


def create_app(settings: Settings | None = None, *, path_prefix: str = "") -> Litestar:
    """Build the app; every route (docs and health included) lives under ``path_prefix``.

    Loads the task modules named by ``settings.task_modules`` so the app can validate
    inputs and list task types; it never runs tasks. Puts the token-redacting filter on the
    server's access loggers (``?token=`` on SSE URLs must never reach a log). Builds the
    OpenAPI document here, so a route it cannot document fails now, not at the first read.
    """
    settings = settings or load_settings()
    prefix = normalize_prefix(path_prefix)
    load_task_modules(settings.task_modules)
    install_log_redaction()
    tokens = stream_tokens_for(settings)
    opened = Opened()
    docs_path = f"{prefix}/schema"
    api = Router(
        path=prefix or "/",
        route_handlers=[
            jobs_options,  # before JobController, or Litestar's own OPTIONS answer of /jobs stays
            JobController,
            *SSE_ROUTES,
            *ADMIN_ROUTES,
            list_tasks,
            healthz,
            readyz,
            *DASHBOARD_ROUTES,
        ],
    )
    app = Litestar(
        route_handlers=[api],
        dependencies=dependencies(settings, tokens, opened),
        lifespan=[lifespan(settings, tokens, opened)],
        exception_handlers=EXCEPTION_HANDLERS,
        on_app_init=[auth_hook(settings, exclude=[f"^{re.escape(docs_path)}(/|$)"])],
        openapi_config=openapi_config(docs_path),
        plugins=[RawJsonSchemaPlugin()],
        request_max_body_size=settings.max_body_bytes,
    )
    finalize_openapi(app, settings)
    return app


_app: Litestar | None = None


def __getattr__(name: str) -> Litestar:
    """``web.app.app``: built once, on first access, from the environment."""
    global _app  # noqa: PLW0603 - the module-level app is a lazily built singleton
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create_app()
    return _app
