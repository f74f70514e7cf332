"""Garbage-collector tuning of a worker process (``JOBSTREAM_WORKER_GC_FREEZE``, on by default).

With Python's default threshold a worker collected its young objects every few dozen jobs,
each time tracing every job in flight, and a full collection traced every object of the
imported libraries: about a tenth of a worker's time at a few thousand noop jobs a second.
Jobs leave no reference cycles behind (``tests/e2e/test_workers.py`` checks succeeding,
failing and timed-out ones), so collecting rarely costs little memory; what start-up made
is frozen out of every collection. Start-up freezes without collecting first: a collection of
everything the imports made took 20 to 40 ms before the first job and found a few dozen
unreachable objects, which staying frozen costs a few kilobytes.
"""

from __future__ import annotations

import gc
import logging

from taskiq import AsyncBroker, TaskiqEvents, TaskiqState

from broker.settings import Settings

log = logging.getLogger("jobstream.worker")

GC_THRESHOLD = 50_000
"""Allocations (minus frees) between two young-generation collections; Python's default is 700."""


def tune_gc() -> None:
    """Freeze what start-up made (imports included) and collect rarely from now on."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD)


def tune_gc_in_workers(broker: AsyncBroker, settings: Settings) -> None:
    """Tune the collector in every worker process of ``broker``, once it starts, if the setting is on.

    A worker-start-up handler runs in each process Taskiq's worker command starts (they are
    separate processes, each importing the app), and never in the scheduler or the web app,
    which import the same broker.
    """
    if not settings.worker_gc_freeze:
        return

    def on_worker_startup(state: TaskiqState) -> None:
        tune_gc()
        log.debug("garbage collector: start-up objects frozen, threshold %d", GC_THRESHOLD)

    broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, on_worker_startup)
