"""The worker's garbage-collector tuning: a worker-start-up handler, behind its setting."""

from __future__ import annotations

import subprocess
import sys

import pytest
from taskiq import InMemoryBroker, TaskiqEvents

from broker.settings import load_settings
from workers.gc_tuning import GC_THRESHOLD, tune_gc_in_workers


@pytest.mark.parametrize(("value", "handlers"), [("1", 1), ("0", 0), ("false", 0)])
def test_the_setting_decides_whether_worker_start_up_tunes_the_collector(value: str, handlers: int) -> None:
    broker = InMemoryBroker()
    tune_gc_in_workers(broker, load_settings({"JOBSTREAM_WORKER_GC_FREEZE": value}))
    assert len(broker.event_handlers[TaskiqEvents.WORKER_STARTUP]) == handlers
    assert not broker.event_handlers[TaskiqEvents.CLIENT_STARTUP]  # never in the web app or scheduler


def test_a_worker_process_that_starts_freezes_and_collects_rarely() -> None:
    """In a process of its own: tuning changes the interpreter's global collector."""
    script = (
        "import asyncio, gc\n"
        "from taskiq import InMemoryBroker\n"
        "from broker.settings import load_settings\n"
        "from workers.gc_tuning import tune_gc_in_workers\n"
        "broker = InMemoryBroker()\n"
        "broker.is_worker_process = True\n"
        "tune_gc_in_workers(broker, load_settings({}))\n"
        "asyncio.run(broker.startup())\n"
        "print(gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == [str(GC_THRESHOLD), "True"]
