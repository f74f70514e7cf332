"""The completion-webhook side of the scripts, on a real redis-server: what the terminal
scripts mark due, the claim's lease, and every outcome of an attempt."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from broker.api import Jobstream
from broker.errors import ScriptCode
from broker.keys import partition_of
from broker.models import Job, JobStatus
from broker.scripts import RecordExtras, WebhookClaim
from broker.store import JobStore
from broker.validation import InvalidCallback
from tests.support.deliveries import take
from tests.support.keyspace import ShardListener, event_record, index_size
from workers.tasks import demo  # noqa: F401 - registers the demo tasks

HOOK = "https://hooks.example.com/done"
SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
WINDOW = 600


@pytest.fixture
def store_settings() -> dict[str, Any]:
    return {
        "webhook_allowed_hosts": "hooks.example.com",
        "webhook_secret": SECRET,
        "webhook_max_seconds": WINDOW,
        "retention_seconds": 900,
    }


async def make(store: JobStore, callback_url: str | None = HOOK, **kw: Any) -> Job:
    extras = RecordExtras(callback_url=callback_url)
    job, _ = await store.create(
        task="demo.noop", input_json=b"{}", owner="alice", queue="default", extras=extras, **kw
    )
    return job


async def succeed(store: JobStore, retention: int = 900) -> str:
    """Run the next job to SUCCESS as a worker would; its id."""
    delivery = await take(store)
    started = await store.start(delivery, "c1")
    assert started is not None
    await store.succeed(started, delivery, b"42", retention)
    return delivery.job_id


async def webhook(store: JobStore, job_id: str) -> dict[bytes, bytes]:
    fields: Any = await store.redis.hgetall(store.keys.webhook(job_id))
    return dict(fields)


async def due_score(store: JobStore, job_id: str) -> float | None:
    score: Any = await store.redis.zscore(store.keys.webhooks_due(partition_of(job_id)), job_id)
    return score


async def claim(store: JobStore, lease_ms: int = 10_000) -> WebhookClaim:
    """Claim in every partition, as a sender does; the claim that got something (the tests have
    one job at a time), else the first."""
    claims = [
        await store.scripts.claim_webhooks(partition=p, lease_ms=lease_ms, limit=10)
        for p in range(store.keys.partitions)
    ]
    found = [c for c in claims if c.job_ids]
    assert len(found) <= 1, found
    return found[0] if found else claims[0]


async def due_count(store: JobStore) -> int:
    return sum([await store.redis.zcard(store.keys.webhooks_due(p)) for p in range(store.keys.partitions)])


async def test_a_job_without_callback_url_leaves_no_webhook(store: JobStore) -> None:
    job = await make(store, callback_url=None)
    assert job.webhook is None
    done = await store.get(await succeed(store))
    assert done.status == JobStatus.SUCCESS and done.webhook is None
    assert await webhook(store, job.id) == {}
    assert await due_count(store) == 0


async def test_success_marks_the_webhook_due_with_a_snapshot_in_the_same_change(store: JobStore) -> None:
    job = await make(store)
    assert job.webhook is not None and job.webhook.url == HOOK and job.webhook.state == "waiting"
    done = await store.get(await succeed(store))
    assert done.webhook is not None and done.webhook.state == "pending" and done.webhook.attempts == 0
    assert done.version == job.version + 2  # started, then ended: the webhook rode in the end's change
    hook = await webhook(store, job.id)
    assert hook[b"url"] == HOOK.encode() and hook[b"attempts"] == b"0"
    completed_ms = int(done.completed_at.timestamp() * 1000) if done.completed_at else 0
    assert int(hook[b"deadline"]) == completed_ms + WINDOW * 1000
    assert await due_score(store, job.id) == completed_ms
    record = msgspec.json.decode(hook[b"record"], type=list[str])
    assert dict(zip(record[::2], record[1::2], strict=True))["status"] == "SUCCESS"
    assert WINDOW < await store.redis.ttl(store.keys.webhook(job.id)) <= WINDOW + 3600


async def test_retention_zero_keeps_the_snapshot_for_the_sender(store: JobStore) -> None:
    job = await make(store)
    await succeed(store, retention=0)
    assert not await store.redis.exists(store.keys.job(job.id))
    hook = await webhook(store, job.id)
    record = msgspec.json.decode(hook[b"record"], type=list[str])
    assert dict(zip(record[::2], record[1::2], strict=True))["result"] == "42"
    assert (await claim(store)).job_ids == [job.id]
    reply = await store.scripts.webhook_outcome(job_id=job.id, lease_end_ms=0, outcome="delivered")
    assert reply == (ScriptCode.OK, None, "delivered")  # nothing to show it on, and nothing fails
    assert await webhook(store, job.id) == {}


async def test_cancel_of_a_pending_job_is_due_at_once_a_running_one_when_it_ends(store: JobStore) -> None:
    waiting = await make(store, delay_ms=60_000)
    cancelled = await store.cancel(waiting.id, "alice", 900)
    assert cancelled.webhook is not None and cancelled.webhook.state == "pending"
    assert await due_score(store, waiting.id) is not None
    running = await make(store)
    delivery = await take(store)
    started = await store.start(delivery, "c1")
    assert started is not None
    asked = await store.cancel(running.id, "alice", 900)
    assert asked.webhook is not None and asked.webhook.state == "waiting"
    assert await due_score(store, running.id) is None
    await store.cancelled(started, delivery, 900)
    assert await due_score(store, running.id) is not None


async def test_dead_letter_failure_is_due(store: JobStore) -> None:
    job = await make(store)
    delivery = await take(store)
    assert await store.dead_letter(delivery, "c1", b"payload", 6, "alice", 900)
    failed = await store.get(job.id)
    assert failed.status == JobStatus.FAILURE
    assert failed.webhook is not None and failed.webhook.state == "pending"
    assert await due_score(store, job.id) is not None


async def test_a_claim_leases_and_a_lapsed_lease_goes_to_the_next_claim(store: JobStore) -> None:
    job = await make(store)
    await succeed(store)
    first = await claim(store, lease_ms=200)
    assert first.job_ids == [job.id] and first.next_due_ms is not None and first.next_due_ms <= 200
    assert (await claim(store)).job_ids == []  # leased
    await asyncio.sleep(0.25)  # the lease is Redis time: nothing signals its end
    second = await claim(store)
    assert second.job_ids == [job.id] and second.lease_end_ms > first.lease_end_ms
    stale = await store.scripts.webhook_outcome(
        job_id=job.id, lease_end_ms=first.lease_end_ms, outcome="retry", error="HTTP 500", delay_ms=1000
    )
    assert stale.code == ScriptCode.STALE  # the first sender's retry is not written over the second's claim
    late = await store.scripts.webhook_outcome(
        job_id=job.id, lease_end_ms=first.lease_end_ms, outcome="delivered"
    )
    assert late.detail == "delivered"  # a delivery counts, whoever made it
    gone = await store.scripts.webhook_outcome(
        job_id=job.id, lease_end_ms=second.lease_end_ms, outcome="retry"
    )
    assert gone.code == ScriptCode.NOT_FOUND


async def test_a_retry_then_a_delivery_show_on_the_job_as_new_versions(store: JobStore, redis: Redis) -> None:
    job = await make(store)
    done = await store.get(await succeed(store))
    lease = (await claim(store)).lease_end_ms
    async with ShardListener(store, store.keys.events(partition_of(job.id))) as events:
        retry = await store.scripts.webhook_outcome(
            job_id=job.id, lease_end_ms=lease, outcome="retry", error="HTTP 500", delay_ms=5000
        )
        assert retry.detail == "pending"
        event = await events.next(timeout=5)
    assert event is not None and event_record(event)["webhook_state"] == "pending"
    after_retry = await store.get(job.id)
    assert after_retry.version == done.version + 1 and after_retry.status == JobStatus.SUCCESS
    hook = after_retry.webhook
    assert hook is not None and (hook.state, hook.attempts, hook.last_error) == ("pending", 1, "HTTP 500")
    assert hook.next_attempt_at is not None and done.completed_at is not None
    assert 4 <= (hook.next_attempt_at - after_retry.updated_at).total_seconds() <= 5
    assert await due_score(store, job.id) == int(hook.next_attempt_at.timestamp() * 1000)
    assert await store.redis.ttl(store.keys.job(job.id)) > 890  # its retention is kept
    delivered = await store.scripts.webhook_outcome(job_id=job.id, lease_end_ms=0, outcome="delivered")
    assert delivered.detail == "delivered"
    final = (await store.get(job.id)).webhook
    assert final is not None and (final.state, final.attempts, final.last_error) == ("delivered", 2, None)
    assert final.delivered_at is not None and final.next_attempt_at is None
    assert await due_score(store, job.id) is None and await webhook(store, job.id) == {}


async def test_a_retry_past_the_deadline_fails_the_webhook(store: JobStore) -> None:
    job = await make(store)
    await succeed(store)
    lease = (await claim(store)).lease_end_ms
    await store.redis.hset(store.keys.webhook(job.id), "deadline", "1")  # long past
    reply = await store.scripts.webhook_outcome(
        job_id=job.id, lease_end_ms=lease, outcome="retry", error="ConnectError", delay_ms=1000
    )
    assert reply.detail == "failed"
    hook = (await store.get(job.id)).webhook
    assert hook is not None and (hook.state, hook.attempts, hook.last_error) == ("failed", 1, "ConnectError")
    assert await due_score(store, job.id) is None and await webhook(store, job.id) == {}


async def test_a_retry_is_due_no_later_than_the_deadline(store: JobStore) -> None:
    job = await make(store)
    await succeed(store)
    lease = (await claim(store)).lease_end_ms
    seconds, micros = await store.redis.time()
    deadline = int(seconds) * 1000 + int(micros) // 1000 + 2000
    await store.redis.hset(store.keys.webhook(job.id), "deadline", str(deadline))
    await store.scripts.webhook_outcome(job_id=job.id, lease_end_ms=lease, outcome="retry", delay_ms=60_000)
    assert await due_score(store, job.id) == deadline


async def test_a_due_entry_whose_webhook_expired_is_dropped(store: JobStore) -> None:
    await store.redis.zadd(store.keys.webhooks_due(partition_of("gone-job")), {"gone-job": 1})
    assert (await claim(store)).job_ids == ["gone-job"]
    reply = await store.scripts.webhook_outcome(job_id="gone-job", lease_end_ms=0, outcome="failed")
    assert reply.code == ScriptCode.NOT_FOUND
    assert await due_count(store) == 0


async def test_submit_checks_the_callback_url(store: JobStore) -> None:
    js = Jobstream(store.redis, store.settings, store=store)
    with pytest.raises(InvalidCallback):
        await js.submit("demo.noop", {}, owner="alice", callback_url="https://elsewhere.example/x")
    assert await index_size(store, "alice") == 0  # refused before any write
    job = await js.submit("demo.noop", {}, owner="alice", callback_url=HOOK)
    assert job.webhook is not None and job.webhook.url == HOOK
