"""compose.yaml is validated, not run (no Docker engine here): shape, commands, and targets."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_services_and_redis_persistence() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "web", "worker", "scheduler"}
    assert "--appendonly" in services["redis"]["command"]
    assert services["worker"]["deploy"]["replicas"] >= 2
    for role in ("web", "worker", "scheduler"):
        env = services[role]["environment"]
        assert env["JOBSTREAM_REDIS_URL"] == "redis://redis:6379/0"
        assert services[role]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_every_command_names_an_object_that_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSTREAM_JWT_SECRET", "compose-test-secret-of-32-bytes-or-more")
    services = compose()["services"]
    targets = {
        "web": services["web"]["command"][1],
        "worker": services["worker"]["command"][2],
        "scheduler": services["scheduler"]["command"][2],
    }
    worker = services["worker"]["command"]
    targets["receiver"] = worker[worker.index("--receiver") + 1]
    assert targets == {
        "web": "web.app:app",
        "worker": "workers.app:broker",
        "receiver": "workers.receiver:JobReceiver",
        "scheduler": "scheduler.app:scheduler",
    }
    for target in targets.values():
        module, _, name = target.partition(":")
        assert getattr(importlib.import_module(module), name) is not None


def test_the_image_holds_every_package_it_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = ("broker", "hub", "workers", "scheduler", "web", "cli", "client", "devtools")
    for package in packages:
        assert f"COPY {package} {package}" in dockerfile
    assert "uv sync --frozen --no-dev" in dockerfile
    # Compiled at build time: the image runs as nobody, who cannot write __pycache__.
    (compiling,) = [line for line in dockerfile.splitlines() if "compileall" in line]
    assert set(packages) <= set(compiling.split()), compiling
    assert dockerfile.index("compileall") < dockerfile.index("USER nobody")
