"""One worker process, without Taskiq's process manager: ``python -m workers``.

``taskiq worker workers.app:broker --receiver workers.receiver:JobReceiver --workers N``
is the production form (it restarts crashed children). This form runs exactly one process
whose PID is the worker's, which ``jobstream dev`` and the fault tests rely on to scale and
kill workers one by one.
"""

from __future__ import annotations

import argparse
import os

from taskiq.cli.worker.args import WorkerArgs
from taskiq.cli.worker.run import start_listen


def main(argv: list[str] | None = None) -> None:
    """Parse ``--queues``/``--concurrency``/``--grace`` and run one Taskiq worker process."""
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument(
        "--queues", help="comma-separated queues (default: JOBSTREAM_WORKER_QUEUES or the default queue)"
    )
    parser.add_argument(
        "--concurrency", type=int, help="jobs run at once (default: JOBSTREAM_WORKER_CONCURRENCY)"
    )
    parser.add_argument("--grace", type=float, help="seconds running jobs get to finish on SIGTERM")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.queues:
        os.environ["JOBSTREAM_WORKER_QUEUES"] = args.queues
    from broker.log_format import use_log_format
    from broker.settings import load_settings  # after the environment is final

    settings = load_settings()
    concurrency = args.concurrency or settings.worker_concurrency
    grace = settings.shutdown_grace_seconds if args.grace is None else args.grace
    use_log_format(settings.log_format, args.log_level)  # JSON lines unless on a terminal
    start_listen(
        WorkerArgs.from_cli(
            [
                "workers.app:broker",
                "--receiver",
                "workers.receiver:JobReceiver",
                "--max-async-tasks",
                str(concurrency),
                "--wait-tasks-timeout",
                str(grace),
                "--log-level",
                args.log_level,
            ]
        )
    )


if __name__ == "__main__":
    main()
