"""``python -m bench <scenario> [--quick]``: run one benchmark scenario (or ``all``).

Each scenario starts its own ``redis-server`` and processes on loopback, prints a table,
and writes ``<scenario>.json`` and ``<scenario>.png`` under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
from pathlib import Path

from bench.common import RESULTS, Options, publish

SCENARIOS = {
    "throughput": "N queued noop jobs, 1/2/4 worker processes: jobs/s",
    "peers": "the same noop workload on jobstream, arq, SAQ, streaq and taskiq-redis, interleaved",
    "cost": "Redis commands, round trips and memory per job lifecycle",
    "polling": "GET /jobs/{id} with and without If-None-Match, req/s with wrk",
    "enqueue": "POST /jobs req/s with wrk, against a bare Litestar endpoint as the ceiling",
    "recovery": "SIGKILL the worker running a job: time until it restarts elsewhere and succeeds",
    "latency": "one job at a time: enqueue -> SUCCESS and progress -> SSE client, against Redis's RTT",
    "fanout": "10,000 idle SSE streams on one web process, one job: delivery time, RSS per stream",
    "cluster": "the throughput workload on a three-primary Redis Cluster against one Redis, 1 and 3 workers",
    "startup": "a new worker process: spawn to its first job started, and its imports alone",
}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the chosen scenario(s)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "scenario",
        choices=[*SCENARIOS, "all"],
        help="; ".join(f"{name}: {what}" for name, what in SCENARIOS.items()),
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small, fast run (a smoke test, not a measurement)"
    )
    parser.add_argument("--n", type=int, help="jobs (or requests' duration in seconds for wrk scenarios)")
    parser.add_argument("--rounds", type=int, help="rounds (or runs) to take medians over")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy: throughput profiles a worker, polling and enqueue the web process (pip install py-spy)",
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every scenario's finally blocks stop what it started.
    signal.signal(signal.SIGTERM, _interrupt)
    options = Options(quick=args.quick, out=args.out, n=args.n, rounds=args.rounds, profile=args.profile)
    for name in SCENARIOS if args.scenario == "all" else [args.scenario]:
        module = importlib.import_module(f"bench.{name}")
        publish(module.run(options), options)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
