"""A worker process's own metrics: jobs started and finished, run times and queue waits.

Counted in the process as each job starts and ends (prometheus-client's counters and
histograms, their labelled children kept per task: about 2 µs of CPU a job, no Redis round
trip), and served by the process on its own endpoint, ``JOBSTREAM_WORKER_METRICS_PORT``
(0, the default: none), for Prometheus to scrape each worker pod; sum over pods in the
queries (``sum by (task) (rate(jobstream_jobs_finished_total[5m]))``). A worker that dies
takes its counts with it, which Prometheus's ``rate`` reads as a counter reset. The figures
that are the same for every process (queue depths, lag, oldest waiting age, slots) are the
web's ``/metrics``, read from Redis at scrape time.

The same events keep the plain :class:`Counters` the heartbeat carries (``GET /workers``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("jobstream.worker")

SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
)  # fmt: skip
"""From a noop job's milliseconds to a long report's two hours."""

OUTCOMES = ("succeeded", "failed", "cancelled", "retried", "lost")
"""How an attempt a worker started ends: the job ended (the first three), went back to wait
for a retry, or was left without a final write (its lease went to another worker, or the
worker stopped): ``started == sum(finished) + running``."""

JOBS_STARTED = Counter("jobstream_jobs_started", "jobs (attempts) this worker started", ["task"])
JOBS_FINISHED = Counter(
    "jobstream_jobs_finished", "attempts this worker ended, by outcome", ["task", "outcome"]
)
RUN_SECONDS = Histogram(
    "jobstream_job_run_seconds",
    "from an attempt's start to its final write",
    ["task"],
    buckets=SECONDS_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "jobstream_job_queue_wait_seconds",
    "from when a job was due (created, or its delay or retry backoff over) to its start",
    ["task"],
    buckets=SECONDS_BUCKETS,
)
SLOTS = Gauge("jobstream_worker_slots", "jobs this worker runs at once")
BUSY_SLOTS = Gauge("jobstream_worker_busy_slots", "jobs this worker runs now")


@dataclass(slots=True)
class Counters:
    """What this worker has done, for its heartbeat."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    lost: int = 0


@dataclass(slots=True)
class _TaskSeries:
    """One task's labelled children, looked up once: ``labels()`` costs more than the count."""

    started: Any
    finished: dict[str, Any]
    run: Any
    wait: Any


@dataclass(slots=True)
class JobMetrics:
    """The heartbeat's :class:`Counters` and the Prometheus series, counted together."""

    counters: Counters = field(default_factory=Counters)
    _tasks: dict[str, _TaskSeries] = field(default_factory=dict)

    def _series(self, task: str) -> _TaskSeries:
        series = self._tasks.get(task)
        if series is None:
            series = self._tasks[task] = _TaskSeries(
                JOBS_STARTED.labels(task),
                {outcome: JOBS_FINISHED.labels(task, outcome) for outcome in OUTCOMES},
                RUN_SECONDS.labels(task),
                QUEUE_WAIT_SECONDS.labels(task),
            )
        return series

    def started(self, task: str, waited_ms: int | None) -> None:
        """An attempt started, ``waited_ms`` after the job was due (None: not known)."""
        self.counters.started += 1
        series = self._series(task)
        series.started.inc()
        if waited_ms is not None:
            series.wait.observe(waited_ms / 1000)

    def ended(self, task: str, outcome: str, run_seconds: float) -> None:
        """An attempt ended (``outcome`` one of :data:`OUTCOMES`) after ``run_seconds``."""
        setattr(self.counters, outcome, getattr(self.counters, outcome) + 1)
        series = self._series(task)
        series.finished[outcome].inc()
        series.run.observe(run_seconds)

    def lost_before_start(self) -> None:
        """A delivery whose start could not be written before its lease lapsed."""
        self.counters.lost += 1


def serve_worker_metrics(port: int, host: str, slots: int, busy: Any) -> bool:
    """Serve this process's metrics on ``host:port`` (prometheus-client's own HTTP server, in
    a thread); ``busy()`` answers the busy slots at scrape time. False (logged) if the port is
    taken: with ``taskiq worker --workers N`` only one process of a container gets it, so run
    one ``python -m workers`` per container instead."""
    SLOTS.set(slots)
    BUSY_SLOTS.set_function(busy)
    try:
        start_http_server(port, addr=host)
    except OSError as err:
        log.warning("worker metrics: cannot listen on %s:%d (%s); no metrics endpoint", host, port, err)
        return False
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return True
