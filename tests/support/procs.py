"""Real processes for end-to-end tests: workers and the web server.

Each helper starts one process with the test's Redis and key prefix, and the caller ends
it with ``stop`` (by PID). The web server listens on a socket this process bound and
hands over (``uvicorn --fd``), so no port is picked now and bound later by someone else;
it is ready when it answers ``/healthz`` on that socket and holds it itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]


def env_for(redis_url: str, prefix: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a jobstream process bound to one test's Redis and prefix."""
    env = dict(os.environ)
    env.update(
        JOBSTREAM_REDIS_URL=redis_url,
        JOBSTREAM_PREFIX=prefix,
        JOBSTREAM_AUTH="none",
        # Plain text, which the tests read line by line (their logs go to files, where the
        # default would be JSON lines); tests/e2e/test_json_logs.py asks for the default.
        JOBSTREAM_LOG_FORMAT="text",
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


def listening_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1 and listening, inheritable by a child."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class WebServer:
    """The web app under uvicorn on a socket bound here and handed to it.

    ``start`` hands the socket to a new uvicorn process and returns once that process
    answers. Then this process lets go of its copy, so the port closes with the server,
    unless ``restartable``: the socket is then held until ``close``, and ``start`` may run
    the server again on the same port after ``stop`` (connections made in between wait in
    the socket's backlog).
    """

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        log_level: str = "warning",
        restartable: bool = False,
        app: tuple[str, ...] = ("web.app:app",),
        health_path: str = "/healthz",
    ) -> None:
        self.redis_url, self.prefix, self.env, self.log = redis_url, prefix, dict(env or {}), log
        self.log_level, self.restartable = log_level, restartable
        self.app, self.health_path = app, health_path
        """``app``: uvicorn's app arguments (``("--factory", "pkg.mod:make")`` for a factory);
        ``health_path``: what answers 200 once the app is up (under a mount's prefix)."""
        self.listener = listening_socket()
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> subprocess.Popen[bytes]:
        fd = self.listener.fileno()
        assert fd >= 0, "the socket was let go after the first start: pass restartable=True"
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *self.app, "--fd", str(fd), "--log-level", self.log_level],
            cwd=ROOT,
            env=env_for(self.redis_url, self.prefix, self.env),
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=[fd],
        )
        try:
            wait_for(self._answers, timeout, f"the web process on port {self.port}", self.tail)
        except AssertionError:
            self.stop()
            raise
        if not self.restartable:
            self.listener.close()
        return self.proc

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        proc, self.proc = self.proc, None
        return None if proc is None else stop(proc, sig)

    def close(self) -> None:
        self.stop()
        self.listener.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""

    def _answers(self) -> bool:
        """Our child answers ``/healthz`` on our socket (a dead child is a failure, not a wait)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the web process exited with {self.proc.returncode}: {self.tail()}")
        try:
            answered = httpx.get(f"{self.url}{self.health_path}", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False
        return answered and holds_socket(self.proc.pid, self.listener)


def holds_socket(pid: int, sock: socket.socket) -> bool:
    """Whether process ``pid`` has ``sock`` open (Linux: its fds link to ``socket:[inode]``)."""
    wanted = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
    fds = Path(f"/proc/{pid}/fd")
    return any(os.readlink(fd) == wanted for fd in fds.iterdir())
