"""One test's web process (and the workers it starts), on the test's Redis and key prefix.

The one stack of the end-to-end tests: ``sse_stack`` (tests/e2e/conftest.py) makes one per
test, ``module_stack`` gives each test a handle on one shared by its module; the fault
tests build theirs on their own Redis. Read with httpx, one connection per request (no
keep-alive), the way separate browsers would.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from broker.keys import Keys
from tests.support.polling import until
from tests.support.procs import WebServer, start_worker, stop
from tests.support.web_support import SECRET

TASK_MODULES = "workers.tasks,tests.support.worker_tasks"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELLED"}

Job = dict[str, Any]


def stack_env(jwt: bool = False, **env: str) -> dict[str, str]:
    """``JOBSTREAM_*`` variables from keyword names (``retention_seconds="60"``), test tasks loaded."""
    environ = {f"JOBSTREAM_{name.upper()}": value for name, value in env.items()}
    environ.setdefault("JOBSTREAM_TASK_MODULES", TASK_MODULES)
    if jwt:
        environ.update(JOBSTREAM_AUTH="jwt", JOBSTREAM_JWT_SECRET=SECRET)
    return environ


def _client(base_url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    return httpx.AsyncClient(base_url=base_url, timeout=20, limits=limits)


@dataclass
class WebStack:
    """The web server (its access log on, so a test can read what it logs) and workers.

    A handle on a server shared by a module (``joining``) reads the log from where it was
    when the test began, and leaves the server running when it closes.
    """

    server: WebServer
    http: httpx.AsyncClient
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_start: int = 0
    owns_server: bool = True

    @classmethod
    def open(
        cls, redis_url: str, prefix: str, env: dict[str, str], log: Path, restartable: bool = False
    ) -> Self:
        server = WebServer(redis_url, prefix, env, log, log_level="info", restartable=restartable)
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        return cls(server, _client(server.url))

    @classmethod
    def joining(cls, server: WebServer) -> Self:
        """A test's handle on a running server it does not own: a client of its own, its log lines."""
        log_start = server.log.stat().st_size if server.log is not None and server.log.exists() else 0
        return cls(server, _client(server.url), log_start=log_start, owns_server=False)

    async def aclose(self) -> None:
        await self.http.aclose()
        for proc in reversed(self.workers):
            stop(proc)
        if self.owns_server:
            self.server.close()

    @property
    def redis_url(self) -> str:
        return self.server.redis_url

    @property
    def prefix(self) -> str:
        return self.server.prefix

    @property
    def env(self) -> dict[str, str]:
        return self.server.env

    @property
    def log(self) -> Path:
        assert self.server.log is not None
        return self.server.log

    @property
    def web(self) -> subprocess.Popen[bytes]:
        assert self.server.proc is not None, "the web process is stopped"
        return self.server.proc

    @property
    def base_url(self) -> str:
        return self.server.url

    def start_worker(self, log: Path | None = None) -> subprocess.Popen[bytes]:
        proc = start_worker(self.redis_url, self.prefix, env=self.env, log=log or self.log)
        self.workers.append(proc)
        return proc

    def job_key(self, job_id: str) -> str:
        return Keys(self.prefix).job(job_id)

    async def create(
        self,
        task: str,
        data: dict[str, Any] | None = None,
        *,
        fields: dict[str, Any] | None = None,
        **headers: str,
    ) -> Job:
        """``POST /jobs`` (``fields`` adds to the body: ``delay_seconds``...); asserts the 202."""
        body = {"type": task, "input": data or {}, **(fields or {})}
        response = await self.http.post("/jobs", json=body, headers=headers)
        assert response.status_code == 202, response.text
        job: Job = response.json()
        return job

    async def job(self, job_id: str, **headers: str) -> Job:
        response = await self.http.get(f"/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job: Job = response.json()
        return job

    async def wait(self, job_id: str, done: Callable[[Job], bool], timeout: float = 20) -> Job:
        """Poll the job until ``done(job)``; fail with the processes' log tail."""

        async def probe() -> Job | None:
            job = await self.job(job_id)
            return job if done(job) else None

        return await until(probe, timeout, f"job {job_id}", self.tail)

    def log_text(self) -> str:
        """What the processes logged since this handle was made."""
        return self.log.read_bytes()[self.log_start :].decode(errors="replace") if self.log.exists() else ""

    def tail(self) -> str:
        return self.log_text()[-4000:]


def terminal(job: Job) -> bool:
    return job["status"] in TERMINAL
