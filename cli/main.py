"""The ``jobstream`` command line.

``jobstream dev`` runs the whole system locally (embedded Redis, web, workers, scheduler),
restarts a worker that dies, and stops it all on Ctrl-C (:mod:`devtools.dev_stack`);
``jobstream redis`` runs the embedded Redis in the foreground; ``jobstream
submit|get|list|...`` talk to a running API (:mod:`cli.job_commands`); ``jobstream schedule
...`` manages recurring jobs (:mod:`cli.schedule_commands`); ``jobstream config`` prints every
setting (:mod:`cli.config_command`). Every command but ``dev`` and ``redis`` finds the Redis
and the web app of a ``jobstream dev`` running in this folder by itself
(:mod:`devtools.dev_state`). A new subcommand is one ``add_<name>_command(subparsers)``
function that sets ``handler`` on its parser, listed in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from broker.errors import JobstreamError
from cli import job_commands, schedule_commands
from cli.config_command import add_config_command
from devtools.dev_stack import (
    DEV_REDIS_PORT,
    JWT_SECRET_ENV,
    REDIS_URL_ENV,
    run_dev,
    run_redis,
    say,
)
from devtools.dev_state import adopt_dev
from devtools.embedded_redis import DEFAULT_DATA_DIR

SubParsers = argparse._SubParsersAction  # argparse has no public name for it
Handler = Callable[[argparse.Namespace], int]


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _tcp_port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def add_dev_command(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``jobstream dev``."""
    parser = subparsers.add_parser(
        "dev",
        help="run Redis, the web app, workers and the scheduler locally",
        description="Run everything locally; Ctrl-C stops it all. Starts an embedded Redis "
        f"unless {REDIS_URL_ENV} is set; without {JWT_SECRET_ENV}, auth is off.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="web address (default: %(default)s)")
    parser.add_argument("--port", type=_tcp_port, default=8000, help="web port (default: %(default)s)")
    parser.add_argument(
        "--workers",
        type=_non_negative_int,
        default=1,
        help="worker processes (default: %(default)s)",
    )
    parser.add_argument("--no-scheduler", action="store_true", help="do not start the scheduler")
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=None,
        help="seconds a process gets to stop after SIGTERM before SIGKILL (default: the workers' "
        "grace, JOBSTREAM_SHUTDOWN_GRACE_SECONDS, plus 10)",
    )
    parser.set_defaults(handler=run_dev)


def add_redis_command(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``jobstream redis``."""
    parser = subparsers.add_parser(
        "redis",
        help="run the embedded Redis in the foreground",
        description="Run a real redis-server on 127.0.0.1 (AOF on) until Ctrl-C.",
    )
    parser.add_argument(
        "--port", type=_tcp_port, help=f"default: {DEV_REDIS_PORT}, or a free port if it is busy"
    )
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DATA_DIR, help="data folder (default: %(default)s)"
    )
    parser.set_defaults(handler=run_redis)


# ---------------------------------------------------------------- entry point

COMMANDS: tuple[Callable[[SubParsers[argparse.ArgumentParser]], None], ...] = (
    add_dev_command,
    add_redis_command,
    job_commands.register,
    schedule_commands.register,
    add_config_command,
)
_OWN_REDIS = frozenset({"dev", "redis"})
"""Commands that start a Redis rather than look for one."""


def build_parser() -> argparse.ArgumentParser:
    """The ``jobstream`` parser with every subcommand in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="jobstream", description="A Redis-only job broker.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; answers the process exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] not in _OWN_REDIS:
        adopt_dev(os.environ)  # before the parser reads its defaults from the environment
    args = build_parser().parse_args(words)
    handler: Handler = args.handler
    try:
        return handler(args)
    except JobstreamError as exc:
        say(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
