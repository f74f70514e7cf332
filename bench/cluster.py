"""``cluster``: the throughput scenario on a three-primary Redis Cluster against one Redis.

The same N ``demo.noop`` jobs queued first, then 1 and then 3 worker processes, on one
``redis-server`` and on a Redis Cluster of three primaries on the same machine (the
Cluster default of 16 partitions), interleaved: single 1, cluster 1, single 3, cluster 3,
and again for each round. Rates are steady (first ``started_at`` to last ``completed_at``),
as in ``throughput``; Redis CPU is summed over the cluster's nodes.

Every process shares the machine's cores: on 2 cores, three primaries and three workers
compete for them, so this measures what partitioning costs per job (CPU) more than what a
real cluster of several machines gains.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.common import Options, Report, bench_redis, fmt_rate, fmt_spread, summary
from bench.throughput import run_once
from devtools.redis_cluster import ClusterServers

WORKER_COUNTS = (1, 3)
COLUMNS = ["Redis", "workers", "jobs/s (steady)", "spread", "worker CPU us/job", "Redis CPU us/job"]


async def _main(options: Options) -> Report:
    n = options.pick(200, 20_000, options.n)
    rounds = options.pick(1, 3, options.rounds)
    runs: list[dict[str, Any]] = []
    with (
        bench_redis() as single,
        tempfile.TemporaryDirectory(prefix="jobstream-bench-cluster-") as folder,
        ClusterServers(Path(folder) / "nodes") as cluster,
    ):
        log = Path(folder) / "workers.log"
        targets = {"single": (single.url, single.pid), "cluster": (cluster.url, cluster.pids)}
        for _ in range(rounds):
            for workers in WORKER_COUNTS:
                for name, (url, pids) in targets.items():
                    run = await run_once(url, pids, n, workers, log)
                    runs.append({"redis": name, **run})
    rows, stats = [], {}
    for workers in WORKER_COUNTS:
        for name in ("single", "cluster"):
            mine = [r for r in runs if (r["redis"], r["workers"]) == (name, workers)]
            steady = summary([r["steady_rate"] for r in mine])
            cpu = {key: _median(mine, key) for key in ("worker_cpu_us_per_job", "redis_cpu_us_per_job")}
            stats[f"{name}/{workers}"] = {"steady": steady, **cpu}
            label = name if name == "single" else "cluster (3 primaries, 16 partitions)"
            spread = fmt_spread(steady) if rounds > 1 else "-"
            cpu_cells = [f"{v:.0f}" for v in cpu.values()]
            rows.append([label, str(workers), fmt_rate(steady["median"]), spread, *cpu_cells])
    notes = [
        f"N = {n:,} demo.noop jobs queued before the workers start; {rounds} round(s), single and "
        "cluster interleaved; medians, spread = min-max over rounds.",
        f"{os.cpu_count()} CPU cores shared by every Redis node, the workers and this bench.",
    ]
    data = {"n": n, "rounds": rounds, "stats": stats, "runs": runs}
    title = f"cluster: {n:,} queued noop jobs, one Redis vs three primaries"
    return Report("cluster", title, COLUMNS, rows, data, notes)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if key in r]
    return summary(values)["median"] if values else float("nan")


def run(options: Options) -> Report:
    """Run the scenario and return its report."""
    return asyncio.run(_main(options))
