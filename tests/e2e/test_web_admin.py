"""Operator routes: queue depths, live workers, Prometheus metrics; admins only (or no-auth)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from broker.keys import Keys
from tests.support.polling import until
from tests.support.procs import start_worker, stop
from tests.support.web_support import SECRET, app_client, web_settings
from web.auth import make_token


async def test_queues_count_waiting_delayed_and_dead(redis_url: str, prefix: str, redis: Redis) -> None:
    settings = web_settings(redis_url, prefix)
    async with app_client(settings) as client:
        for body in (
            {"type": "demo.noop"},
            {"type": "demo.noop"},
            {"type": "demo.noop", "delay_seconds": 60},
        ):
            assert (await client.post("/jobs", json=body)).status_code == 202
        await redis.xadd(Keys(prefix).dead("default", 0), {"data": "x"})
        response = await client.get("/queues")
        assert response.status_code == 200
        default = next(q for q in response.json() if q["name"] == "default")
        oldest = default.pop("oldest_waiting_seconds")
        assert default == {
            "name": "default", "waiting": 2, "in_flight": 0, "delayed": 1, "dead": 1, "lag": 2,
            "worker_slots": 0, "busy_slots": 0,
        }  # fmt: skip
        assert 0 <= oldest < 30
        text = (await client.get("/metrics")).text
        assert 'jobstream_queue_waiting{queue="default"} 2.0' in text
        assert 'jobstream_queue_dead_letters{queue="default"} 1.0' in text
        assert 'jobstream_jobs_created_total{task="demo.noop"} 3.0' in text
        assert 'jobstream_queue_delayed{queue="default"} 1.0' in text
        assert "jobstream_sse_listeners" in text


@pytest.mark.timeout(60)
async def test_workers_lists_a_live_worker_and_forgets_it_when_it_stops(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    settings = web_settings(redis_url, prefix)
    worker = start_worker(redis_url, prefix, log=tmp_path / "worker.log")
    try:
        async with app_client(settings) as client:

            async def listed() -> list[dict[str, object]] | None:
                return (await client.get("/workers")).json() or None

            workers = await until(listed, 30, "the worker's heartbeat")
            assert workers[0]["pid"] == worker.pid
            assert workers[0]["queues"] == ["default"]
            assert f"jobstream_workers {1.0}" in (await client.get("/metrics")).text
            assert stop(worker, signal.SIGTERM) == 0

            async def gone() -> bool:
                return (await client.get("/workers")).json() == []

            await until(gone, 10, "the heartbeat to go")
    finally:
        stop(worker, signal.SIGKILL)


async def test_operator_routes_need_the_admin_role_with_jwt(redis_url: str, prefix: str) -> None:
    settings = web_settings(redis_url, prefix, auth="jwt", jwt_secret=SECRET)
    user = {"Authorization": f"Bearer {make_token(settings, 'alice')}"}
    admin = {"Authorization": f"Bearer {make_token(settings, 'ops', roles=['admin'])}"}
    async with app_client(settings) as client:
        assert (await client.get("/queues", headers=user)).status_code == 403
        assert (await client.get("/workers", headers=user)).status_code == 403
        assert (await client.get("/queues")).status_code == 401
        assert (await client.get("/queues", headers=admin)).status_code == 200
        assert (await client.get("/workers", headers=admin)).status_code == 200
        assert (await client.get("/metrics")).status_code == 401  # issue 10: not for anyone
        assert (await client.get("/metrics", headers=user)).status_code == 403
        assert (await client.get("/metrics", headers=admin)).status_code == 200
