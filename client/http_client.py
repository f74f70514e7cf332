"""A Python client for the jobstream HTTP API: submit a job, then follow it, list jobs, fetch
a result.

``follow`` takes the server-sent events stream when it can and falls back to polling
``GET /jobs/{id}`` with ``If-None-Match`` and the server's ``Retry-After`` when it cannot
(an old proxy, a stream that keeps dropping), so callers see the same sequence of states
either way. ``wait`` and ``result`` raise as the in-process ``broker.Jobstream``'s do
(``TimeoutError``; ``JobFailed`` and ``JobNotDone``, here built from the HTTP answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, Self

import httpx
import msgspec
from httpx_sse import SSEError, aconnect_sse

from broker.errors import JobstreamError
from broker.models import Job, JobError, JobStatus

log = logging.getLogger("jobstream.client")
_decode_job = msgspec.json.Decoder(Job).decode


class ApiError(JobstreamError):
    """The server answered with a problem (RFC 9457) or an unexpected status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class JobFailed(ApiError):
    """``result`` of a job that ended FAILURE or CANCELLED (409): how it ended, and its error."""

    def __init__(self, detail: str, job_status: JobStatus | None, error: JobError | None) -> None:
        super().__init__(409, detail)
        self.job_status = job_status
        self.error = error


class JobNotDone(JobstreamError):
    """``result`` of a job still PENDING or PROCESSING (202); ask again after ``retry_after`` s."""

    def __init__(self, job_id: str, status: JobStatus, retry_after: float) -> None:
        super().__init__(f"job {job_id} is {status}; it has no result yet")
        self.job_id = job_id
        self.status = status
        self.retry_after = retry_after


class JobPage(msgspec.Struct):
    """One page of ``list``: newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    jobs: list[Job]
    next_cursor: str | None


class _ResultAnswer(msgspec.Struct):
    id: str
    status: JobStatus
    result: msgspec.Raw


class _Problem(msgspec.Struct):
    title: str = ""
    detail: str | None = None
    job_status: JobStatus | None = None
    error: JobError | None = None


_decode_page = msgspec.json.Decoder(JobPage).decode
_decode_result = msgspec.json.Decoder(_ResultAnswer).decode
_decode_problem = msgspec.json.Decoder(_Problem).decode


class JobstreamClient:
    """Async client of one jobstream server; use it as ``async with JobstreamClient(url) as c``."""

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout: float = 30.0, use_sse: bool = True
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.use_sse = use_sse

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def submit(
        self,
        task: str,
        data: Any = None,
        *,
        idempotency_key: str | None = None,
        delay_seconds: float | None = None,
        timeout: float | None = None,
        labels: dict[str, str] | None = None,
        owner: str | None = None,
    ) -> Job:
        """Create a job (``POST /jobs``) and return it as the server recorded it.

        ``timeout`` (seconds, at most the task's) and ``labels`` are per-job options;
        ``owner`` creates the job for another owner (a token with the service role only).
        """
        body: dict[str, Any] = {"type": task, "input": {} if data is None else data}
        options = {"delay_seconds": delay_seconds, "timeout": timeout, "labels": labels, "owner": owner}
        body.update({name: value for name, value in options.items() if value is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = await self._http.post(
            "/jobs",
            content=msgspec.json.encode(body),
            headers={"Content-Type": "application/json", **headers},
        )
        return _decode_job(_checked(response).content)

    async def get(self, job_id: str) -> Job:
        """The job's current state."""
        return _decode_job(_checked(await self._http.get(f"/jobs/{job_id}")).content)

    async def list(
        self,
        *,
        status: JobStatus | None = None,
        task: str | None = None,
        labels: Mapping[str, str] | None = None,
        owner: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """The caller's jobs, newest first (``GET /jobs``), filtered by status, task type and
        labels (all must match); ``owner`` lists another owner's (admins and services only)."""
        given = {"limit": str(limit), "status": status, "type": task, "owner": owner, "cursor": cursor}
        params: dict[str, str | list[str]] = {name: value for name, value in given.items() if value}
        params["label"] = [f"{key}:{value}" for key, value in (labels or {}).items()]
        return _decode_page(_checked(await self._http.get("/jobs", params=params)).content)

    async def result(self, job_id: str) -> Any:
        """The result of a job that ended SUCCESS, decoded from JSON; ``JobFailed`` if it ended
        FAILURE or CANCELLED, ``JobNotDone`` while it is still active (see :meth:`wait`)."""
        response = await self._http.get(f"/jobs/{job_id}/result")
        if response.status_code == 409:
            problem = _decode_problem(response.content)
            raise JobFailed(problem.detail or problem.title, problem.job_status, problem.error)
        answer = _decode_result(_checked(response).content)
        if response.status_code == 202:
            raise JobNotDone(job_id, answer.status, float(response.headers.get("Retry-After", "1")))
        return msgspec.json.decode(answer.result)

    async def cancel(self, job_id: str) -> Job:
        """Ask to cancel the job; returns its state right after the request."""
        return _decode_job(_checked(await self._http.post(f"/jobs/{job_id}/cancel")).content)

    async def follow(self, job_id: str) -> AsyncGenerator[Job, None]:
        """Every state of the job from now until it ends (SSE, else polling); newest wins."""
        last = 0
        if self.use_sse:
            try:
                async for job in self._sse(job_id):
                    last = job.version
                    yield job
                    if job.terminal:
                        return
            except (httpx.TransportError, SSEError, ApiError) as exc:
                log.info("SSE unavailable for job %s (%s); polling instead", job_id, exc)
        async for job in self._poll(job_id, after=last):
            yield job

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Follow the job to its end and return its final state; ``TimeoutError`` if it has not
        ended within ``timeout`` seconds (the job keeps running; its stream or poll is closed)."""
        final: Job | None = None
        async with asyncio.timeout(timeout), aclosing(self.follow(job_id)) as states:
            async for job in states:
                final = job
        assert final is not None
        return final

    async def _sse(self, job_id: str) -> AsyncIterator[Job]:
        async with aconnect_sse(self._http, "GET", f"/jobs/{job_id}/events", timeout=None) as source:
            if source.response.status_code == 204:
                return
            if source.response.status_code >= 400:
                await source.response.aread()
                _checked(source.response)
            async for event in source.aiter_sse():
                if event.event == "job":
                    yield _decode_job(event.data)

    async def _poll(self, job_id: str, after: int) -> AsyncIterator[Job]:
        etag: str | None = None
        while True:
            headers = {"If-None-Match": etag} if etag else {}
            response = await self._http.get(f"/jobs/{job_id}", headers=headers)
            if response.status_code != 304:
                job = _decode_job(_checked(response).content)
                etag = response.headers.get("ETag")
                if job.version > after:
                    after = job.version
                    yield job
                if job.terminal:
                    return
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        detail = response.text
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            problem = msgspec.json.decode(response.content)
            detail = str(problem.get("detail") or problem.get("title") or detail)
        raise ApiError(response.status_code, detail)
    return response
