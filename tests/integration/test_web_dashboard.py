"""The dashboard page and the browser client's files, served by the app (in process).

The browser itself drives them in ``tests/browser/test_dashboard_browser.py``.
"""

from __future__ import annotations

import uuid

from tests.support.web_support import SECRET, app_client, web_settings


async def test_dashboard_and_client_are_served_under_a_path_prefix(redis_url: str) -> None:
    settings = web_settings(redis_url, f"t{uuid.uuid4().hex[:8]}:", auth="jwt", jwt_secret=SECRET)
    async with app_client(settings, path_prefix="/api") as client:
        page = await client.get("/api/")
        assert page.status_code == 200
        assert '<base href="/api/">' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        script = await client.get("/api/static/jobstream.js")  # no token needed for the files
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert "export class Jobstream" in script.text
        assert (await client.get("/api/static/../app.py")).status_code == 404
        assert (await client.get("/api/jobs")).status_code == 401  # the data still needs one
