"""Operator routes: ``GET /queues``, ``GET /workers`` and ``GET /metrics`` (Prometheus), admins only.

Queue depths, host names and PIDs are nobody else's business. ``/metrics`` (and
``/events/stats``) also take the metrics token (``JOBSTREAM_METRICS_TOKEN``) as a bearer
credential, so Prometheus scrapes without a user JWT. In the no-auth mode the one local
user may read them: that mode is for trusted networks, where the operator is the user.

What ``/metrics`` holds, and why there: the queue figures and the jobs created are read
from Redis at scrape time (every web replica reports the same, so aggregate them with
``max``), and so do not lag; the worker slots come from the workers' heartbeats, which a
worker rewrites within a fraction of a second of each change; the SSE and pub/sub figures
are this process's own. Jobs started and finished, and the run-time and queue-wait
histograms, are counted in each worker process and served by its own endpoint
(``JOBSTREAM_WORKER_METRICS_PORT``, :mod:`workers.worker_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.fleet import QueueStats, WorkerInfo, created_counts, live_workers, queue_stats
from broker.registry import registry
from broker.settings import Settings
from broker.store import JobStore
from web.auth import METRICS_OPT, operator_guard
from web.live.sse import EventStreams, StreamStats
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


@get("/queues", summary="Queue figures", **OPERATOR_ROUTE)
async def list_queues(
    store: NamedDependency[JobStore], settings: NamedDependency[Settings]
) -> list[QueueStats]:
    """Per queue: entries waiting, in flight, delayed and dead-lettered, the group's lag, the
    oldest waiting entry's age, and the live workers' slots and busy slots."""
    workers = await live_workers(store.redis, store.keys, settings.lease_seconds)
    return await queue_stats(store.redis, store.keys, _queues(settings), workers)


@get("/workers", summary="Live workers", **OPERATOR_ROUTE)
async def list_workers(
    store: NamedDependency[JobStore], settings: NamedDependency[Settings]
) -> list[WorkerInfo]:
    """Workers whose heartbeat is current (one that missed two beats is left out): host, pid,
    queues, running job ids (within a fraction of a second of a start or an end), slots, busy
    slots by queue, counters."""
    return await live_workers(store.redis, store.keys, settings.lease_seconds)


_QUEUE_GAUGES = (
    ("waiting", "waiting", "entries no worker has taken yet"),
    ("in_flight", "in_flight", "entries held by workers (running jobs)"),
    ("delayed", "delayed", "delayed jobs and retries waiting for their time"),
    ("dead_letters", "dead", "dead-lettered entries"),
    ("lag", "lag", "the consumer group's lag (XINFO GROUPS; the waiting count where Redis cannot tell)"),
    ("oldest_waiting_age_seconds", "oldest_waiting_seconds", "age of the oldest waiting entry (0: none)"),
    ("worker_slots", "worker_slots", "jobs the live workers of this queue can run at once"),
    ("busy_slots", "busy_slots", "jobs of this queue the live workers run now"),
)


class _Snapshot(Collector):
    """The figures of one scrape, read from Redis and this process just before."""

    def __init__(
        self,
        queues: list[QueueStats],
        workers: list[WorkerInfo],
        created: dict[str, int],
        streams: StreamStats | None,
    ) -> None:
        self.queues, self.workers, self.created, self.streams = queues, workers, created, streams

    def collect(self) -> Iterator[Metric]:
        for name, field, text in _QUEUE_GAUGES:
            family = GaugeMetricFamily(f"jobstream_queue_{name}", text, labels=["queue"])
            for queue in self.queues:
                family.add_metric([queue.name], getattr(queue, field))
            yield family
        yield GaugeMetricFamily("jobstream_workers", "live workers (a current heartbeat)", len(self.workers))
        created = CounterMetricFamily("jobstream_jobs_created", "jobs created, by task type", labels=["task"])
        for task, count in sorted(self.created.items()):
            created.add_metric([task], count)
        yield created
        if self.streams is not None:
            yield from _stream_metrics(self.streams)


def _stream_metrics(stats: StreamStats) -> Iterator[Metric]:
    streams = GaugeMetricFamily("jobstream_sse_streams", "open SSE streams of this process", labels=["kind"])
    streams.add_metric(["job"], stats.job_streams)
    streams.add_metric(["owner"], stats.owner_streams)
    yield streams
    hub = stats.hub
    yield GaugeMetricFamily(
        "jobstream_sse_listeners", "live-update listeners (streams, long polls) of this process",
        value=hub.listeners,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "jobstream_pubsub_connected", "1 while every partition's events subscription is up",
        value=int(hub.connected),
    )  # fmt: skip
    yield GaugeMetricFamily("jobstream_pubsub_channels", "channels this process subscribes", hub.channels)
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
    """Queue figures, worker slots and jobs created (read from Redis now), this process's
    SSE and pub/sub figures, and its process metrics."""
    redis, keys = store.redis, store.keys
    streams: EventStreams | None = getattr(request.app.state, "streams", None)
    workers = await live_workers(redis, keys, settings.lease_seconds)
    snapshot = _Snapshot(
        await queue_stats(redis, keys, _queues(settings), workers),
        workers,
        await created_counts(redis, keys),
        streams.stats() if streams is not None else None,
    )
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(snapshot)
    return Response(generate_latest(scrape) + generate_latest(REGISTRY), media_type=PROMETHEUS_TEXT)


ROUTES = [list_queues, list_workers, metrics]
