"""The Taskiq worker app: ``taskiq worker workers.app:broker`` (and ``python -m workers``).

Both commands import this module in every worker process they start; the collector is
tuned there, once the worker starts (``JOBSTREAM_WORKER_GC_FREEZE``, :mod:`workers.gc_tuning`).
"""

from __future__ import annotations

from broker.registry import load_task_modules, registry
from broker.settings import load_settings
from workers.gc_tuning import tune_gc_in_workers
from workers.job_broker import JobBroker

settings = load_settings()
load_task_modules(settings.task_modules)
broker = JobBroker(settings, registry)
tune_gc_in_workers(broker, settings)
