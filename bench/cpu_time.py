"""CPU time of the processes a scenario started, from /proc: per request, per job, per core."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import descendants

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far (from /proc; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every process below it (a worker manager's workers)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child, _ in descendants(pid))


class CpuMeter:
    """CPU time of the worker processes and of Redis from 20% of the jobs done to all done.

    CPU per job is far less disturbed than jobs/s by other load on a shared machine, and
    it shows where the cores go: into the workers or into Redis. Starting at 20% keeps
    the start-up of workers that came up late out of it.
    """

    def __init__(
        self, procs: Sequence[subprocess.Popen[bytes]], redis_pid: int | Sequence[int], n: int
    ) -> None:
        self.procs, self.n = procs, n
        # On Redis Cluster: every node's.
        self.redis_pids = [redis_pid] if isinstance(redis_pid, int) else list(redis_pid)
        self.samples: list[tuple[float, int, float, float]] = []

    def observe(self, done: int) -> None:
        """Call with each completion count: samples at the first count >= 20% of n and at n."""
        if done >= self.n * 0.2 and (not self.samples or done >= self.n):
            workers = sum(tree_cpu_seconds(proc.pid) for proc in self.procs)
            redis = sum(cpu_seconds(pid) for pid in self.redis_pids)
            self.samples.append((time.monotonic(), done, workers, redis))

    def per_job(self) -> dict[str, float]:
        """Worker and Redis CPU us per job, and utilisation (1.0 = one core; workers: per process)."""
        if len(self.samples) < 2:
            return {}
        (t0, done0, w0, r0), (t1, done1, w1, r1) = self.samples[0], self.samples[-1]
        jobs, span = done1 - done0, t1 - t0
        if jobs <= 0 or span <= 0:
            return {}
        return {
            "worker_cpu_us_per_job": 1e6 * (w1 - w0) / jobs,
            "redis_cpu_us_per_job": 1e6 * (r1 - r0) / jobs,
            "worker_cpu_utilisation": (w1 - w0) / span / len(self.procs),
            "redis_cpu_utilisation": (r1 - r0) / span,
        }
