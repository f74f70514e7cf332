"""``jobstream list`` (the caller's jobs, newest first, filtered; an admin's: everyone's) and job
ids given by a unique prefix (``jobstream get 01a20e0d``, the 8 characters a progress bar shows).

Both read ``GET /jobs`` page by page. A prefix is looked for among the newest jobs the caller
may see, back to the time the prefix names (a job id is a UUIDv7: its first 12 hex digits are
its creation time in ms), and at most :data:`PREFIX_SCAN_JOBS` of them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from broker.errors import JobstreamError
from broker.models import Job

PREFIX_SCAN_JOBS = 10_000
_PAGE = 100
_FULL_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PREFIX = re.compile(r"^[0-9a-f][0-9a-f-]{0,35}$")
_SLACK_MS = 60_000
"""Ids are stamped by the creator's clock and listed by Redis's: a minute of disagreement is allowed."""


class _Page(msgspec.Struct):
    jobs: list[Job]
    next_cursor: str | None


def http_client(base_url: str, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=30.0)


async def listed(http: httpx.AsyncClient, params: dict[str, Any], limit: int) -> AsyncIterator[Job]:
    """Up to ``limit`` jobs of ``GET /jobs`` with ``params``, newest first, page after page."""
    cursor: str | None = None
    left = limit
    while left > 0:
        query = {**params, "limit": min(_PAGE, left), **({"cursor": cursor} if cursor else {})}
        response = await http.get("/jobs", params=query)
        if response.status_code != 200:
            raise JobstreamError(f"GET /jobs: HTTP {response.status_code}: {_detail(response)}")
        page = msgspec.json.decode(response.content, type=_Page)
        for job in page.jobs:
            yield job
        left -= len(page.jobs)
        cursor = page.next_cursor
        if cursor is None:
            return


async def resolve_job_id(http: httpx.AsyncClient, text: str) -> str:
    """The one job id ``text`` starts (a whole id is returned as it is); a clear error for none
    or several."""
    text = text.strip().lower()
    if _FULL_ID.match(text):
        return text
    if not _PREFIX.match(text):
        raise JobstreamError(f"{text!r} is neither a job id nor the start of one")
    digits = text.replace("-", "")[:12]
    oldest_ms = int(digits.ljust(12, "0"), 16) - _SLACK_MS
    matches: list[str] = []
    async for job in listed(http, {}, PREFIX_SCAN_JOBS):
        if job.id.startswith(text):
            matches.append(job.id)
        elif int(job.id.replace("-", "")[:12], 16) < oldest_ms:
            break  # listing goes back in time: nothing older can start with it
    if not matches:
        raise JobstreamError(f"no job of yours has an id starting with {text}")
    if len(matches) > 1:
        raise JobstreamError(f"{text} is the start of {len(matches)} job ids: {', '.join(matches[:5])}...")
    return matches[0]


def print_rows(jobs: list[Job]) -> None:
    """One line per job: id, status, progress, type, owner, created, and the worker (admins)."""
    out = sys.stdout
    for job in jobs:
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
        cells = [job.id, f"{job.status.value:<10}", f"{job.progress:5.1f}%", job.type, job.owner, created]
        out.write("  ".join(cells + ([job.worker] if job.worker else [])) + "\n")


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail") or response.text)
    except ValueError:
        return response.text
