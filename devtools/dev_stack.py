"""The local stack behind ``jobstream dev`` and ``jobstream redis``: an embedded Redis, the web
app, workers and the scheduler as child processes, supervised until Ctrl-C.

A worker or the scheduler that dies is started again (logged), as taskiq's own process
manager does; one that keeps dying within seconds of its start stops everything, and so
does Redis or the web app ending. Ctrl-C (or SIGTERM) stops every child with SIGTERM and
waits for them as long as the workers' own grace for running jobs
(``JOBSTREAM_SHUTDOWN_GRACE_SECONDS``) plus a margin, so a long job finishes instead of
starting over at the next run. While it runs, ``.jobstream/dev.json`` says where its Redis
and web app are, for the other ``jobstream`` commands (:mod:`devtools.dev_state`).

The command line itself (argument parsing) is in :mod:`cli.main`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Self

from broker.settings import load_settings
from devtools.dev_state import DevState
from devtools.embedded_redis import DEFAULT_DATA_DIR, EmbeddedRedis, port_is_free

SignalHandler = Callable[[int, FrameType | None], Any] | int | None

REDIS_URL_ENV = "JOBSTREAM_REDIS_URL"
JWT_SECRET_ENV = "JOBSTREAM_JWT_SECRET"
AUTH_ENV = "JOBSTREAM_AUTH"
EXPOSE_TRACEBACKS_ENV = "JOBSTREAM_EXPOSE_TRACEBACKS"
DEV_REDIS_PORT = 6390
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_POLL_SECONDS = 0.1
STOP_MARGIN_SECONDS = 10.0
"""Past the workers' grace: their last writes (hand-back, heartbeat delete), the web's drain."""
QUICK_DEATH_SECONDS = 5.0
QUICK_DEATHS = 5
"""A restartable child that dies this many times in a row, each within QUICK_DEATH_SECONDS of
its start, cannot start at all: everything stops instead of restarting it forever."""


def say(message: str) -> None:
    print(f"jobstream: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- process supervision


@dataclass(frozen=True)
class ChildSpec:
    """A child process to start: a name for messages, its argument vector, and whether the
    supervisor starts it again when it dies (workers, the scheduler)."""

    name: str
    argv: tuple[str, ...]
    restart: bool = False


@dataclass(frozen=True)
class Watched:
    """A running process the supervisor watches: ``poll`` returns its exit code once it ended;
    ``spec`` is what started it (None: not ours to restart)."""

    name: str
    pid: int
    poll: Callable[[], int | None]
    spec: ChildSpec | None = None
    started: float = 0.0


class StopSignals:
    """While active, SIGINT, SIGTERM and SIGHUP only record that a stop was asked.

    The shutdown then runs in order from the main loop instead of being cut short by a
    ``KeyboardInterrupt`` in the middle of it.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, SignalHandler] = {}

    def __enter__(self) -> Self:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum


class ChildProcesses:
    """The processes one command started, stopped together by PID when the block exits.

    Each child runs in its own session, so a terminal's Ctrl-C reaches only us and we stop
    the children in order; a child that ignores SIGTERM past ``stop_timeout`` is SIGKILLed
    together with its process group (a Taskiq worker's own subprocesses included).
    """

    def __init__(self, env: Mapping[str, str], stop_timeout: float = 10.0) -> None:
        self.env = dict(env)
        self.stop_timeout = stop_timeout
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, spec: ChildSpec) -> Watched:
        """Start ``spec`` with this group's environment and return it, to be watched."""
        process = subprocess.Popen(spec.argv, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True)
        self._started.append((spec.name, process))
        return Watched(spec.name, process.pid, process.poll, spec, time.monotonic())

    def stop_all(self) -> None:
        """SIGTERM every live child, wait for all up to ``stop_timeout``, then SIGKILL the rest."""
        alive = [(name, process) for name, process in self._started if process.poll() is None]
        self._started.clear()
        for _, process in alive:
            os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for name, process in alive:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                waited = f"{self.stop_timeout:g}s"
                say(f"{name} (pid {process.pid}) ignored SIGTERM for {waited}; killing it")
                _kill_group(process)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # The child is not reaped yet, so its PID still names its own process group.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def supervise(
    watched: Sequence[Watched], stop: StopSignals, children: ChildProcesses | None = None
) -> int:
    """Block until a stop signal (answer 0) or until a watched process ends by itself that
    ``children`` does not start again (1): a restartable one is, unless it keeps dying at once."""
    live = list(watched)
    quick_deaths: dict[str, int] = {}
    while stop.received is None:
        for index, item in enumerate(live):
            code = item.poll()
            if code is None:
                continue
            again = _restarted(item, code, children, quick_deaths)
            if again is None:
                return 1
            live[index] = again
        time.sleep(_POLL_SECONDS)
    say(f"{signal.Signals(stop.received).name} received; stopping all")
    return 0


def _restarted(
    item: Watched, code: int, children: ChildProcesses | None, quick_deaths: dict[str, int]
) -> Watched | None:
    """``item`` started again after it exited with ``code`` (logged), or None: stop everything."""
    ended = f"{item.name} (pid {item.pid}) exited by itself (code {code})"
    if children is None or item.spec is None or not item.spec.restart:
        say(f"{ended}; stopping all")
        return None
    quick = time.monotonic() - item.started < QUICK_DEATH_SECONDS
    quick_deaths[item.name] = quick_deaths.get(item.name, 0) + 1 if quick else 0
    if quick_deaths[item.name] >= QUICK_DEATHS:
        say(f"{ended}, {QUICK_DEATHS} times in a row right after its start; stopping all")
        return None
    again = children.start(item.spec)
    say(f"{ended}; restarted it as pid {again.pid}")
    return again


# ---------------------------------------------------------------- jobstream dev


def module_available(name: str) -> bool:
    """Whether ``name`` can be found for import (without importing the module itself)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def dev_children(args: argparse.Namespace) -> list[ChildSpec]:
    """The processes ``jobstream dev`` starts besides Redis: web, N workers, the scheduler."""
    python = sys.executable
    web = (python, "-m", "uvicorn", "web.app:app", "--host", args.host, "--port", str(args.port))
    worker = (python, "-m", "workers")
    children = [ChildSpec("web", web)]
    children += [ChildSpec(f"worker-{n}", worker, restart=True) for n in range(1, args.workers + 1)]
    if not args.no_scheduler and module_available("scheduler.app"):
        scheduler = (python, "-m", "taskiq", "scheduler", "scheduler.app:scheduler", "--update-interval", "5")
        children.append(ChildSpec("scheduler", scheduler, restart=True))
    return children


def stop_timeout(args: argparse.Namespace, env: Mapping[str, str]) -> float:
    """How long the children get after SIGTERM: ``--stop-timeout``, else the workers' grace
    (``JOBSTREAM_SHUTDOWN_GRACE_SECONDS``) plus :data:`STOP_MARGIN_SECONDS`."""
    if args.stop_timeout is not None:
        return float(args.stop_timeout)
    return load_settings(env).shutdown_grace_seconds + STOP_MARGIN_SECONDS


def dev_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The children's environment: without a JWT secret, the no-auth single-user mode; failed
    jobs show their tracebacks to their owners (unless ``JOBSTREAM_EXPOSE_TRACEBACKS`` says no)."""
    env = dict(environ)
    env.setdefault(EXPOSE_TRACEBACKS_ENV, "true")
    if not env.get(JWT_SECRET_ENV):
        env.setdefault(AUTH_ENV, "none")
    return env


def default_redis_port() -> int | None:
    """The dev Redis port, 6390, or None (pick a free one) when it is taken."""
    if port_is_free(DEV_REDIS_PORT):
        return DEV_REDIS_PORT
    say(f"port {DEV_REDIS_PORT} is busy; the embedded Redis takes a free port")
    return None


def _http_base(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def _print_dev_banner(args: argparse.Namespace, env: Mapping[str, str], redis: str) -> None:
    base = _http_base(args.host, args.port)
    auth = env.get(AUTH_ENV, "jwt")
    auth_note = " (one local user, no token needed)" if auth == "none" else ""
    lines = [
        "jobstream dev",
        f"  dashboard  {base}/",
        f"  API docs   {base}/schema",
        f"  redis      {redis}",
        f"  auth       {auth}{auth_note}",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)


def run_dev(args: argparse.Namespace) -> int:
    """Run Redis (unless ``JOBSTREAM_REDIS_URL`` is set), web, workers and scheduler."""
    env = dev_environment(os.environ)
    with StopSignals() as stop, ExitStack() as stack:
        watched: list[Watched] = []
        redis_shown = f"from {REDIS_URL_ENV}"  # the URL may hold a password: never print it
        embedded_url: str | None = None
        if not env.get(REDIS_URL_ENV):
            server = EmbeddedRedis(default_redis_port(), DEFAULT_DATA_DIR)
            stack.enter_context(server)
            env[REDIS_URL_ENV] = embedded_url = server.url
            redis_shown = f"{server.url} (embedded, data in {server.data_dir})"
            watched.append(Watched("redis", server.pid, server.poll))
        # Entered after Redis, so the children are stopped before it.
        children = stack.enter_context(ChildProcesses(env, stop_timeout=stop_timeout(args, env)))
        watched += [children.start(spec) for spec in dev_children(args)]
        stack.enter_context(DevState(os.getpid(), _http_base(args.host, args.port), embedded_url).written())
        _print_dev_banner(args, env, redis_shown)
        return supervise(watched, stop, children)


def run_redis(args: argparse.Namespace) -> int:
    """Run the embedded Redis until Ctrl-C or SIGTERM; its URL is the first line on stdout."""
    port = args.port if args.port is not None else default_redis_port()
    with StopSignals() as stop, EmbeddedRedis(port, args.dir) as server:
        print(server.url, flush=True)
        say(f"redis-server pid {server.pid}, data in {server.data_dir}, log {server.log_path}")
        return supervise([Watched("redis", server.pid, server.poll)], stop)
