"""The Litestar app: ``web.app:app`` for an ASGI server, :func:`create_app` for tests and mounts.

``app`` is built on first access from the ``JOBSTREAM_*`` environment, so importing this
module never fails; a misconfiguration (JWT auth without a secret) fails when the server
loads ``app``, before it serves anything.

Mounted in another ASGI app (``FastAPI().mount("/api", create_app())``, Starlette's
``Mount``), the app works without its lifespan (see :mod:`web.resources`), and the URLs it
hands out (``Location``, stream URLs, the stream cookie's path, the dashboard's base) carry
the mount's prefix, which the host puts in the ASGI ``root_path``.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Litestar, Request, Response, Router, route
from litestar.enums import HttpMethod

from broker.log_format import use_log_format
from broker.registry import load_task_modules
from broker.settings import Settings, load_settings
from web.auth import Authenticate
from web.auth_middleware import auth_hook
from web.cors import cors_config
from web.live.sse import ROUTES as SSE_ROUTES
from web.live.stream_tokens import StreamTokens
from web.log_redaction import install_log_redaction
from web.openapi import RawJsonSchemaPlugin, finalize_openapi, openapi_config
from web.problems import EXCEPTION_HANDLERS
from web.request_ids import RequestIds
from web.resources import Resources, dependencies
from web.routes.admin import ROUTES as ADMIN_ROUTES
from web.routes.dashboard import ROUTES as DASHBOARD_ROUTES
from web.routes.health import healthz, readyz
from web.routes.jobs import JobController
from web.routes.operator_page import operator_page
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


def create_app(
    settings: Settings | None = None, *, path_prefix: str = "", authenticate: Authenticate | None = None
) -> Litestar:
    """Build the app; every route (docs and health included) lives under ``path_prefix``.

    ``authenticate``: the host app's own way of knowing the caller, a function (sync or
    async) from the connection to a :class:`web.User` or None (401); it replaces the bearer
    JWT check (see :class:`web.auth_middleware.HookAuthMiddleware`).

    Loads the task modules named by ``settings.task_modules`` so the app can validate
    inputs and list task types; it never runs tasks. Puts the token-redacting filter on the
    server's access loggers (``?token=`` on SSE URLs must never reach a log). Builds the
    OpenAPI document here, so a route it cannot document fails now, not at the first read.
    """
    settings = settings or load_settings()
    prefix = normalize_prefix(path_prefix)
    load_task_modules(settings.task_modules)
    install_log_redaction()
    checks_credentials = authenticate is not None or settings.auth == "jwt"
    tokens = StreamTokens.for_settings(settings, credentials_checked=checks_credentials)
    resources = Resources(settings, tokens if checks_credentials else None)
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
            operator_page,
        ],
    )
    exclude = [f"^{re.escape(docs_path)}(/|$)"]
    app = Litestar(
        route_handlers=[api],
        dependencies=dependencies(resources, tokens),
        lifespan=[resources.lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        on_app_init=[auth_hook(settings, exclude, tokens, authenticate)],
        openapi_config=openapi_config(docs_path),
        plugins=[RawJsonSchemaPlugin()],
        cors_config=cors_config(settings),
        request_max_body_size=settings.max_body_bytes,
        middleware=[RequestIds],
    )
    resources.app = app
    app.state.resources = resources
    finalize_openapi(app, settings, custom_auth=authenticate is not None)
    return app


_app: Litestar | None = None


def __getattr__(name: str) -> Litestar:
    """``web.app.app``: built once, on first access, from the environment; the server's log
    lines then follow ``JOBSTREAM_LOG_FORMAT`` (JSON unless on a terminal)."""
    global _app  # noqa: PLW0603 - the module-level app is a lazily built singleton
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        settings = load_settings()
        _app = create_app(settings)
        use_log_format(settings.log_format)
    return _app
