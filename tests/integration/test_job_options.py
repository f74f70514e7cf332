"""Per-job options on a real Redis, in process: ``timeout``, ``labels`` (stored, shown,
filtered page by page) and a task's ``keep_until_fetched`` (the record's TTL shortened by
the first fetch, and only then)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

import tests.support.option_tasks  # noqa: F401 - registers options.kept and options.capped
import workers.tasks  # noqa: F401 - registers the demo tasks
from broker import InvalidOption, Jobstream
from broker.settings import load_settings
from broker.store import JobStore, Started
from tests.support.deliveries import take
from tests.support.web_support import PROBLEM_JSON, SECRET, app_client, keys_under, new_user, web_settings

pytestmark = pytest.mark.timeout(60)

GRACE = 30
RETENTION = 3600  # options.kept's retention


@pytest.fixture
async def js(redis: Redis, redis_url: str, prefix: str) -> AsyncIterator[Jobstream]:
    settings = load_settings({}, redis_url=redis_url, prefix=prefix, fetched_grace_seconds=GRACE)
    async with Jobstream(redis, settings) as api:
        yield api


async def finish(store: JobStore) -> None:
    """Run the next queued job to SUCCESS as a worker would."""
    delivery = await take(store)
    started = await store.start(delivery, "c1")
    assert started is not None
    await store.succeed(started, delivery, b'"done"', RETENTION)


async def test_timeout_and_labels_are_stored_and_shown(js: Jobstream, redis: Redis) -> None:
    job = await js.submit("options.capped", owner="alice", timeout=1.5, labels={"case": "42", "team": "a"})
    assert (job.timeout_seconds, job.labels) == (1.5, {"case": "42", "team": "a"})
    fields: Any = await redis.hgetall(js.store.keys.job(job.id))
    assert fields[b"timeout"] == b"1.5"
    assert fields[b"labels"] == b'{"case":"42","team":"a"}'
    assert (await js.get(job.id)).labels == {"case": "42", "team": "a"}
    plain = await js.submit("demo.noop", owner="alice")
    assert (plain.timeout_seconds, plain.labels, plain.created_by) == (None, {}, None)
    assert b"timeout" not in await redis.hkeys(js.store.keys.job(plain.id))


async def test_the_worker_gets_the_jobs_own_timeout_from_the_start_reply(js: Jobstream) -> None:
    job = await js.submit("options.capped", owner="alice", timeout=0.25)
    started = await js.store.start(await take(js.store), "c1")
    assert started is not None and started.job.timeout == 0.25
    spec = js.tasks.get("options.capped")
    assert spec.timeout_for(started.job.timeout) == 0.25
    assert spec.timeout_for(None) == 5  # no timeout of its own: the task's
    assert js.tasks.get("demo.noop").timeout_for(None) is None
    assert job.id == started.job.id


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"timeout": 6}, "$.timeout"),  # over options.capped's 5 s
        ({"timeout": 0}, "$.timeout"),
        ({"timeout": -1}, "$.timeout"),
        ({"timeout": float("inf")}, "$.timeout"),
        ({"labels": {"bad key": "x"}}, "$.labels"),
        ({"labels": {"a:b": "x"}}, "$.labels"),
        ({"labels": {"k": ""}}, "$.labels"),
        ({"labels": {"k": "x" * 129}}, "$.labels"),
        ({"labels": {"k": "line\nbreak"}}, "$.labels"),
        ({"labels": {f"k{i}": "v" for i in range(17)}}, "$.labels"),
    ],
)
async def test_submit_refuses_bad_options_and_writes_nothing(
    js: Jobstream, redis: Redis, prefix: str, options: dict[str, Any], field: str
) -> None:
    before = await keys_under(redis, prefix)
    with pytest.raises(InvalidOption) as refused:
        await js.submit("options.capped", owner="alice", **options)
    assert refused.value.field == field
    assert await keys_under(redis, prefix) == before


async def test_post_jobs_refuses_a_timeout_over_the_tasks_with_422(redis_url: str, prefix: str) -> None:
    async with app_client(web_settings(redis_url, prefix)) as client:
        over = await client.post("/jobs", json={"type": "options.capped", "timeout": 10})
        assert over.status_code == 422, over.text
        assert over.headers["content-type"] == PROBLEM_JSON
        problem = over.json()
        assert problem["type"] == "urn:jobstream:problem:invalid-option"
        assert problem["errors"][0]["field"] == "$.timeout"
        assert "at most 5" in problem["detail"]
        zero = await client.post("/jobs", json={"type": "demo.noop", "timeout": 0})
        assert zero.status_code == 422 and "$.timeout" in zero.text
        labels = await client.post("/jobs", json={"type": "demo.noop", "labels": {"no spaces": "x"}})
        assert labels.status_code == 422 and "$.labels" in labels.text
        ok = await client.post("/jobs", json={"type": "options.capped", "timeout": 5, "labels": {"a": "b"}})
        assert ok.status_code == 202, ok.text
        assert (ok.json()["timeout_seconds"], ok.json()["labels"]) == (5.0, {"a": "b"})


async def test_labels_filter_the_listing_page_by_page(js: Jobstream) -> None:
    wanted = []
    for i in range(12):
        labels = {"case": "42" if i % 2 == 0 else "7", "team": "a" if i % 3 else "b"}
        job = await js.submit("demo.noop", owner="alice", labels=labels)
        if labels == {"case": "42", "team": "a"}:
            wanted.append(job.id)
    await js.submit("demo.noop", owner="bob", labels={"case": "42", "team": "a"})
    assert len(wanted) == 4
    seen: list[str] = []
    cursor = None
    while True:
        page = await js.list("alice", labels={"case": "42", "team": "a"}, limit=3, cursor=cursor)
        seen += [job.id for job in page.jobs]
        assert all(job.labels == {"case": "42", "team": "a"} for job in page.jobs)
        if page.cursor is None:
            break
        await js.submit(
            "demo.noop", owner="alice", labels={"case": "42", "team": "a"}
        )  # newer: not in this walk
        cursor = page.cursor
    assert seen == wanted[::-1]  # newest first, each once, none created during the walk
    assert len((await js.list("alice", labels={"case": "42"}, limit=100)).jobs) == 6 + 1
    assert (await js.list("alice", labels={"case": "nope"})).jobs == []


async def test_get_jobs_label_filter_over_http(redis_url: str, prefix: str) -> None:
    async with app_client(web_settings(redis_url, prefix)) as client:
        for labels in ({"case": "42", "team": "a"}, {"case": "42", "team": "b"}, {"case": "7"}):
            assert (
                await client.post("/jobs", json={"type": "demo.noop", "labels": labels})
            ).status_code == 202
        both = (await client.get("/jobs?label=case:42&label=team:b")).json()["jobs"]
        assert [job["labels"] for job in both] == [{"case": "42", "team": "b"}]
        assert len((await client.get("/jobs?label=case:42")).json()["jobs"]) == 2
        assert (await client.get("/jobs?label=case:42&label=case:7")).json()["jobs"] == []
        assert (await client.get("/jobs?label=case:42&label=case:42")).json()["jobs"] != []
        bad = await client.get("/jobs?label=no-colon")
        assert bad.status_code == 400 and bad.headers["content-type"] == PROBLEM_JSON


async def test_keep_until_fetched_shortens_the_ttl_at_the_first_fetch_only(
    js: Jobstream, redis: Redis
) -> None:
    kept = await js.submit("options.kept", owner="alice")
    assert kept.keep_until_fetched
    key = js.store.keys.job(kept.id)
    assert (await js.get(kept.id)).status == "PENDING"  # not ended: not a fetch
    await finish(js.store)
    assert await redis.ttl(key) > RETENTION - 60
    await js.list("alice")
    await js.get(kept.id, fetch=False)  # a look, not a fetch
    assert await redis.ttl(key) > RETENTION - 60
    fetched = await js.get(kept.id)
    assert 0 < await redis.ttl(key) <= GRACE
    assert fetched.expires_at is not None
    assert fetched.expires_at <= datetime.now(UTC) + timedelta(seconds=GRACE)
    assert (await js.get(kept.id)).expires_at == fetched.expires_at  # later reads: the same, no renewal
    assert await js.result(kept.id) == "done"


async def test_a_task_without_the_option_keeps_its_retention(js: Jobstream, redis: Redis) -> None:
    job = await js.submit("demo.noop", owner="alice")
    await finish(js.store)
    assert not (await js.get(job.id)).keep_until_fetched
    assert await redis.ttl(js.store.keys.job(job.id)) > RETENTION - 60


async def test_wait_counts_as_a_fetch(js: Jobstream, redis: Redis) -> None:
    kept = await js.submit("options.kept", owner="alice")
    await finish(js.store)
    done = await js.wait(kept.id, timeout=10)
    assert done.status == "SUCCESS"
    assert 0 < await redis.ttl(js.store.keys.job(kept.id)) <= GRACE


async def test_a_retention_shorter_than_the_grace_is_never_lengthened(js: Jobstream, redis: Redis) -> None:
    kept = await js.submit("options.kept", owner="alice")
    delivery = await take(js.store)
    started = await js.store.start(delivery, "c1")
    assert isinstance(started, Started)
    await js.store.succeed(started, delivery, b"null", 5)
    await js.get(kept.id)
    assert 0 < await redis.ttl(js.store.keys.job(kept.id)) <= 5


async def test_over_http_the_owners_read_fetches_and_an_operators_look_does_not(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    settings = web_settings(redis_url, prefix, fetched_grace_seconds=GRACE, auth="jwt", jwt_secret=SECRET)
    store = JobStore(redis, settings)
    alice, admin = new_user(), new_user(admin=True)
    async with app_client(settings) as client:
        created = await client.post("/jobs", json={"type": "options.kept"}, headers=alice.headers)
        job = created.json()
        await finish(store)
        key = store.keys.job(job["id"])
        assert (await client.get("/jobs", headers=alice.headers)).status_code == 200
        looked = await client.get(f"/jobs/{job['id']}", headers=admin.headers)
        assert looked.json()["status"] == "SUCCESS"
        assert await redis.ttl(key) > RETENTION - 60  # listing and an admin's look: still kept
        result = await client.get(f"/jobs/{job['id']}/result", headers=alice.headers)
        assert result.status_code == 200 and result.json()["result"] == "done"
        assert 0 < await redis.ttl(key) <= GRACE
        again = await client.get(f"/jobs/{job['id']}", headers=alice.headers)
        assert again.json()["keep_until_fetched"] is True
        assert again.json()["expires_at"] != looked.json()["expires_at"]  # the record says when it goes


async def test_mark_fetched_script_refuses_what_is_not_a_first_fetch(js: Jobstream, redis: Redis) -> None:
    scripts = js.store.scripts
    assert await scripts.mark_fetched(job_id="no-such-job", grace_seconds=GRACE) is None
    assert not await redis.exists(js.store.keys.job("no-such-job"))  # nothing made up
    kept = await js.submit("options.kept", owner="alice")
    assert await scripts.mark_fetched(job_id=kept.id, grace_seconds=GRACE) is None  # still PENDING
    plain = await js.submit("demo.noop", owner="alice")
    await finish(js.store)
    await finish(js.store)
    assert await scripts.mark_fetched(job_id=plain.id, grace_seconds=GRACE) is None  # not kept until fetched
    before: Any = await redis.hgetall(js.store.keys.job(kept.id))
    expires_ms = await scripts.mark_fetched(job_id=kept.id, grace_seconds=GRACE)
    assert expires_ms is not None
    after: Any = await redis.hgetall(js.store.keys.job(kept.id))
    assert after[b"version"] == before[b"version"]  # a fetch is no change of the job
    assert int(after[b"expires_at"]) == expires_ms and b"fetched_at" in after
    assert await scripts.mark_fetched(job_id=kept.id, grace_seconds=GRACE) is None  # fetched before


async def test_a_grace_of_zero_deletes_the_record_at_the_first_fetch(js: Jobstream, redis: Redis) -> None:
    kept = await js.submit("options.kept", owner="alice")
    await finish(js.store)
    assert await js.store.scripts.mark_fetched(job_id=kept.id, grace_seconds=0) is not None
    assert not await redis.exists(js.store.keys.job(kept.id))
