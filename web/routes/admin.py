"""Operator routes: ``GET /queues``, ``GET /workers`` and ``GET /metrics`` (Prometheus), admins only.

Queue depths, host names and PIDs are nobody else's business. ``/metrics`` (and
``/events/stats``) also take the metrics token (``JOBSTREAM_METRICS_TOKEN``) as a bearer
credential, so Prometheus scrapes without a user JWT. In the no-auth mode the one local
user may read them: that mode is for trusted networks, where the operator is the user.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.fleet import QueueStats, WorkerInfo, live_workers, queue_stats
from broker.registry import registry
from broker.settings import Settings
from broker.store import JobStore
from hub.event_hub import EventHub, HubStats
from web.auth import METRICS_OPT, operator_guard
from web.openapi import problem_responses

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _queues(settings: Settings) -> set[str]:
    return registry.queues(settings.default_queue)


OPERATOR_ROUTE: dict[str, Any] = {
    "guards": [operator_guard],
    "tags": ["ops"],
    "responses": problem_responses(401, 403, 503),
}
"""What every operator route declares: admins (or operators) only; 401, 403, and 503 (no Redis)."""


@get("/queues", summary="Queue depths", **OPERATOR_ROUTE)
async def list_queues(
    store: NamedDependency[JobStore], settings: NamedDependency[Settings]
) -> list[QueueStats]:
    """Per queue: entries waiting, held by workers (in flight), delayed, and dead-lettered."""
    return await queue_stats(store.redis, store.keys, _queues(settings))


@get("/workers", summary="Live workers", **OPERATOR_ROUTE)
async def list_workers(store: NamedDependency[JobStore]) -> list[WorkerInfo]:
    """Workers whose heartbeat is current: host, pid, queues, running job ids, counters."""
    return await live_workers(store.redis, store.keys)


class _Snapshot(Collector):
    """The figures of one scrape, read from Redis and the event hub just before."""

    def __init__(self, queues: list[QueueStats], workers: list[WorkerInfo], hub: HubStats | None) -> None:
        self.queues, self.workers, self.hub = queues, workers, hub

    def collect(self) -> Iterator[Metric]:
        yield from self._queue_metrics()
        yield from self._worker_metrics()
        if self.hub is not None:
            yield from self._hub_metrics(self.hub)

    def _queue_metrics(self) -> Iterator[Metric]:
        for field, text in (
            ("waiting", "entries no worker has taken yet"),
            ("in_flight", "entries held by workers"),
            ("delayed", "delayed jobs and retries waiting for their time"),
            ("dead", "dead-lettered entries"),
        ):
            family = GaugeMetricFamily(f"jobstream_queue_{field}", text, labels=["queue"])
            for queue in self.queues:
                family.add_metric([queue.name], getattr(queue, field))
            yield family

    def _worker_metrics(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "jobstream_workers", "live workers (current heartbeat)", value=len(self.workers)
        )
        running = GaugeMetricFamily("jobstream_worker_running_jobs", "jobs running", labels=["consumer"])
        jobs = CounterMetricFamily("jobstream_worker_jobs", "jobs by outcome", labels=["consumer", "outcome"])
        for worker in self.workers:
            running.add_metric([worker.consumer], len(worker.running))
            for outcome, count in worker.counters.items():
                jobs.add_metric([worker.consumer, outcome], count)
        yield running
        yield jobs

    def _hub_metrics(self, hub: HubStats) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "jobstream_sse_listeners", "live-update listeners in this process", value=hub.listeners
        )
        yield GaugeMetricFamily(
            "jobstream_pubsub_channels", "channels this process subscribes", value=hub.channels
        )
        yield CounterMetricFamily(
            "jobstream_pubsub_events", "events received by this process", value=hub.events_received
        )
        yield CounterMetricFamily("jobstream_pubsub_reconnects", "pub/sub reconnects", value=hub.reconnects)


@get(
    "/metrics",
    opt={METRICS_OPT: True},
    media_type=PROMETHEUS_TEXT,
    summary="Prometheus metrics",
    **OPERATOR_ROUTE,
)
async def metrics(
    request: Request[Any, Any, Any], store: NamedDependency[JobStore], settings: NamedDependency[Settings]
) -> Response[bytes]:
    """Queue depths, live workers and their counters, and this process's live-update figures."""
    redis, keys = store.redis, store.keys
    hub: EventHub | None = getattr(request.app.state, "hub", None)
    snapshot = _Snapshot(
        await queue_stats(redis, keys, _queues(settings)),
        await live_workers(redis, keys),
        hub.stats() if hub is not None else None,
    )
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(snapshot)
    return Response(generate_latest(scrape), media_type=PROMETHEUS_TEXT)


ROUTES = [list_queues, list_workers, metrics]
