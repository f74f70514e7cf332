"""Completion webhooks, sent by the workers: every due one is POSTed, signed, until delivered.

Why the workers and not the scheduler: every deployment runs workers (the scheduler is
one replica, and optional for a deployment with no schedules), they already hold a Redis
pool and run loops beside the jobs, and more workers then also mean more senders.

A job with a ``callback_url`` that ends is marked due by the script that ended it (see
``js_finish`` in ``broker/lua/_lib.lua``): nothing here runs on a job's path. Each worker
claims due webhooks with a lease (``claim_webhooks``: twice the HTTP timeout), so a worker
that dies mid-delivery loses its claim to another worker once the lease is over: a webhook
is delivered at least once, and a receiver deduplicates by ``webhook-id``. Each attempt:

- checks the URL against ``JOBSTREAM_WEBHOOK_ALLOWED_HOSTS`` again (a host taken off the
  list gets nothing more) and sends it straight to that host: no redirect is followed and
  no proxy from the environment is used;
- POSTs ``{"type": "job.succeeded" | "job.failed" | "job.cancelled", "timestamp": <when the
  job ended>, "data": <the job at its terminal state, as GET showed it then>}``, the same
  bytes on every attempt, with the Standard Webhooks headers (:mod:`broker.webhook_signing`);
- counts a 2xx answer within ``JOBSTREAM_WEBHOOK_TIMEOUT_SECONDS`` as delivered; anything
  else is retried with exponential backoff (1 s, 2 s, 4 s... at most 5 minutes, each
  jittered down by up to half) until ``JOBSTREAM_WEBHOOK_MAX_SECONDS`` after the job ended,
  with a last attempt at that deadline, and then the webhook is ``failed``.

With no host allowed the loop only looks, once a minute, for webhooks left from when some
were (and fails them); otherwise once a second, or sooner when a retry is due.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from broker.connection import REDIS_FAULTS, RedisWatch, backoff
from broker.models import Job, JobStatus, job_from_fields
from broker.settings import Settings
from broker.store import JobStore
from broker.webhook_signing import decode_secret, webhook_headers
from broker.webhook_targets import url_refusal

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("jobstream.webhooks")

EVENT_TYPES = {
    JobStatus.SUCCESS: "job.succeeded",
    JobStatus.FAILURE: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}
_POLL_SECONDS = 1.0
_POLL_SECONDS_WHEN_OFF = 60.0
_MAX_AT_ONCE = 20
_FIRST_BACKOFF_SECONDS = 1.0
_MAX_BACKOFF_SECONDS = 300.0
_MAX_ERROR_CHARS = 200


class WebhookEvent(msgspec.Struct):
    """The body of a completion webhook."""

    type: str
    timestamp: datetime
    data: Job


class Outcome(msgspec.Struct):
    """What one attempt came to, as ``webhook_outcome`` records it."""

    outcome: str  # delivered | retry | failed
    error: str = ""
    delay_ms: int = 0


_record_decoder = msgspec.json.Decoder(list[str])
_encode = msgspec.json.Encoder().encode


def event_body(job: Job) -> bytes:
    """The webhook body for a job in its terminal state (``timestamp``: when it ended)."""
    return _encode(WebhookEvent(EVENT_TYPES[job.status], job.completed_at or job.updated_at, job))


def message_id(job_id: str) -> str:
    """The ``webhook-id`` of a job's completion webhook: one per job, the same on every retry."""
    return f"msg_{job_id}"


def retry_delay_ms(attempts: int) -> int:
    """How long to wait after the ``attempts``-th failed attempt: doubling from 1 s, at most
    5 minutes, less up to half of it at random (so retries of many webhooks spread out)."""
    ceiling: float = min(_MAX_BACKOFF_SECONDS, _FIRST_BACKOFF_SECONDS * 2.0 ** max(0, attempts - 1))
    return round(ceiling * random.uniform(0.5, 1.0) * 1000)  # noqa: S311 - jitter, not a secret


class WebhookSender:
    """One worker's webhook loop: claims due webhooks and delivers them, a few at a time."""

    def __init__(self, store: JobStore, settings: Settings, watch: RedisWatch) -> None:
        self.store = store
        self.settings = settings
        self.watch = watch
        self.key = decode_secret(settings.webhook_secret) if settings.webhook_secret else None
        self.timeout = settings.webhook_timeout_seconds
        self.lease_ms = round(2 * self.timeout * 1000)
        self.poll = _POLL_SECONDS if settings.webhook_allowed_hosts.strip() else _POLL_SECONDS_WHEN_OFF
        self.inflight: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    async def run(self) -> None:
        """Claim and deliver, forever; Redis faults are waited out (an unwritten outcome's lease lapses)."""
        failures = 0
        try:
            while True:
                began = time.monotonic()
                try:
                    wait = await self.send_due()
                except REDIS_FAULTS as err:
                    self.watch.failed("claiming webhooks", err, began)
                    failures += 1
                    wait = backoff(failures)
                else:
                    failures = 0
                await asyncio.sleep(max(wait, 0.01))
        finally:
            for task in self.inflight:
                task.cancel()
            await asyncio.gather(*self.inflight, return_exceptions=True)
            if self._client is not None:
                await self._client.aclose()

    def client(self) -> httpx.AsyncClient:
        """The HTTP client, made for the first webhook due: httpx is imported then, not at a
        worker's start (``python -m bench startup``), and never by a worker that sends none."""
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, trust_env=False)
        return self._client

    async def send_due(self) -> float:
        """Start delivering what is due (as many as there is room for); seconds until the next look."""
        room = _MAX_AT_ONCE - len(self.inflight)
        if room <= 0:
            return self.poll
        scripts, partitions = self.store.scripts, range(self.store.keys.partitions)
        share = max(1, room // len(partitions))  # every partition's share of the room, asked together
        claims = await asyncio.gather(
            *(scripts.claim_webhooks(partition=p, lease_ms=self.lease_ms, limit=share) for p in partitions)
        )
        wait = self.poll
        for claim in claims:
            for job_id in claim.job_ids:
                task = asyncio.create_task(self.deliver(self.client(), job_id, claim.lease_end_ms))
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)
            if claim.next_due_ms is not None:
                wait = min(wait, claim.next_due_ms / 1000)
        return wait

    async def deliver(self, client: httpx.AsyncClient, job_id: str, lease_end_ms: int) -> None:
        """One attempt at one claimed webhook, and its outcome written (never raises)."""
        try:
            outcome = await self.attempt(client, job_id)
            reply = await self.store.scripts.webhook_outcome(
                job_id=job_id, lease_end_ms=lease_end_ms, **msgspec.structs.asdict(outcome)
            )
        except REDIS_FAULTS as err:  # the claim's lease lapses and the webhook is tried again
            log.warning("webhook for job %s: Redis failed (%r); it will be tried again", job_id, err)
            return
        except Exception:
            log.exception("webhook for job %s: the sender failed; it will be tried again", job_id)
            return
        log.log(
            logging.WARNING if reply.detail == "failed" else logging.INFO,
            "webhook for job %s: %s%s",
            job_id,
            reply.detail or reply.code.name,
            f" ({outcome.error})" if outcome.error else "",
        )

    async def attempt(self, client: httpx.AsyncClient, job_id: str) -> Outcome:
        """POST the webhook once; what came of it."""
        import httpx  # imported already by client(): a dictionary lookup

        fields: Any = await self.store.redis.hgetall(self.store.keys.webhook(job_id))
        if not fields:
            return Outcome("failed", "the webhook expired")  # the outcome script drops its due entry
        url = fields[b"url"].decode()
        refusal = url_refusal(url, self.settings.webhook_allowed_hosts)
        if refusal is not None or self.key is None:
            return Outcome("failed", refusal or "JOBSTREAM_WEBHOOK_SECRET is not set")
        record = _record_decoder.decode(fields[b"record"])
        body = event_body(job_from_fields(dict(zip(record[::2], record[1::2], strict=True))))
        headers = webhook_headers(self.key, message_id(job_id), int(time.time()), body)
        try:
            async with client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code  # the body is never read: only the status counts
        except httpx.HTTPError as err:
            error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            return self._retry(fields, error[:_MAX_ERROR_CHARS])
        if 200 <= status < 300:
            return Outcome("delivered")
        redirect = " (redirects are not followed)" if 300 <= status < 400 else ""
        return self._retry(fields, f"HTTP {status}{redirect}")

    @staticmethod
    def _retry(fields: dict[bytes, bytes], error: str) -> Outcome:
        attempts = int(fields.get(b"attempts", b"0")) + 1
        return Outcome("retry", error, retry_delay_ms(attempts))
