"""The Taskiq worker app: ``taskiq worker workers.app:broker``."""

from __future__ import annotations

from broker.registry import load_task_modules, registry
from broker.settings import load_settings
from workers.job_broker import JobBroker

settings = load_settings()
load_task_modules(settings.task_modules)
broker = JobBroker(settings, registry)
