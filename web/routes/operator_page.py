"""The operator page (``GET /operator``): queues and workers, for admins.

Like the jobs page it holds no data: its script (``static/operator.js``) reads ``GET /queues``
and ``GET /workers`` with the caller's own token, so serving the page to anyone reveals nothing.
"""

from __future__ import annotations

from functools import cache
from html import escape
from typing import Any

from litestar import MediaType, Request, Response, get

from web.auth import EXCLUDE_KEY
from web.routes.dashboard import _SECURITY_HEADERS, STATIC_DIR


@cache
def _page() -> str:
    return (STATIC_DIR / "operator.html").read_text(encoding="utf-8")


@get(
    "/operator", opt={EXCLUDE_KEY: True}, media_type=MediaType.HTML, include_in_schema=False, name="operator"
)
async def operator_page(request: Request[Any, Any, Any]) -> Response[str]:
    """Queues (waiting, oldest waiting age, lag, slots...) and live workers, refreshed every 2 s."""
    mount = request.scope.get("root_path", "")
    root = mount + request.app.route_reverse("dashboard").rstrip("/") + "/"
    page = _page().replace("<head>", f'<head>\n<base href="{escape(root)}">', 1)
    return Response(page, media_type=MediaType.HTML, headers=_SECURITY_HEADERS)
