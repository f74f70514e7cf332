"""The dashboard page (``GET /``) and the browser files under ``/static``: no auth needed.

The page itself holds no data: its script (``static/dashboard.js``, built on the browser
client ``static/jobstream.js``) calls the API with the caller's own token, so serving it
to anyone reveals nothing. A ``<base href>`` makes every relative URL in the page work
when the app is mounted under a path prefix.
"""

from __future__ import annotations

from functools import cache
from html import escape
from pathlib import Path
from typing import Any

from litestar import MediaType, Request, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from web.auth import EXCLUDE_KEY

STATIC_DIR = Path(__file__).parents[1] / "static"

# Inline styles only; scripts, fetch and EventSource from this origin alone.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
        "img-src 'self' data:; base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _page() -> str:
    return (STATIC_DIR / "dashboard.html").read_text(encoding="utf-8")


@get("/", opt={EXCLUDE_KEY: True}, media_type=MediaType.HTML, include_in_schema=False, name="dashboard")
async def dashboard(request: Request[Any, Any, Any]) -> Response[str]:
    """The live jobs dashboard (HTML; its data comes from the API, fetched by the browser)."""
    mount = request.scope.get("root_path", "")  # the prefix of a mount (FastAPI, Starlette)
    root = mount + request.app.route_reverse("dashboard").rstrip("/") + "/"
    page = _page().replace("<head>", f'<head>\n<base href="{escape(root)}">', 1)
    return Response(page, media_type=MediaType.HTML, headers=_SECURITY_HEADERS)


static_files = create_static_files_router(
    path="/static",
    directories=[STATIC_DIR],
    opt={EXCLUDE_KEY: True},
    cache_control=CacheControlHeader(no_cache=True),
    include_in_schema=False,
)

ROUTES: list[ControllerRouterHandler] = [dashboard, static_files]
