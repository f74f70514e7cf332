"""The Taskiq worker app: ``taskiq worker workers.app:broker``."""

from __future__ import annotations

from broker.settings import load_settings
from broker.taskiq_broker import JobBroker
from broker.tasks import load_task_modules, registry

settings = load_settings()
load_task_modules(settings.task_modules)
broker = JobBroker(settings, registry)
