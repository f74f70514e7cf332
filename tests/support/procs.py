"""Real processes for end-to-end tests: workers, the web server, the scheduler.

Each helper starts one process with the test's Redis and key prefix, and the caller ends
it with ``stop`` (by PID). Waiting is always by polling a condition with a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env_for(redis_url: str, prefix: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a jobstream process bound to one test's Redis and prefix."""
    env = dict(os.environ)
    env.update(
        JOBSTREAM_REDIS_URL=redis_url,
        JOBSTREAM_PREFIX=prefix,
        JOBSTREAM_AUTH="none",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def start_worker(
    redis_url: str, prefix: str, *args: str, env: Mapping[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """One worker process (``python -m workers``)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "workers", *args],
        cwd=ROOT,
        env=env_for(redis_url, prefix, env),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def start_web(
    redis_url: str, prefix: str, port: int, env: Mapping[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """The web app under uvicorn on 127.0.0.1:``port``."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "web.app:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        cwd=ROOT,
        env=env_for(redis_url, prefix, env),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_port(port: int, timeout: float = 20.0) -> None:
    """Wait until something listens on 127.0.0.1:``port``."""

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, timeout, f"port {port}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Signal the process we started, wait (bounded), SIGKILL if needed; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)
