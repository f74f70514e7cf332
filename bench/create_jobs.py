"""``python -m bench.create_jobs URL PREFIX N [--task T] [--concurrency C]``: queue N jobs.

A process of its own so that ``bench.roundtrips`` can count the round trips of job
creation alone. One at a time by default, as one HTTP request creates one job.
"""

from __future__ import annotations

import argparse
import asyncio

from bench.common import create_jobs, job_store


async def _create(url: str, prefix: str, n: int, task: str, concurrency: int) -> None:
    async with job_store(url, prefix) as store:
        await create_jobs(store, n, task=task, concurrency=concurrency)


def main() -> None:
    """Parse the arguments and create the jobs."""
    parser = argparse.ArgumentParser(prog="python -m bench.create_jobs")
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("n", type=int)
    parser.add_argument("--task", default="demo.noop")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(_create(args.url, args.prefix, args.n, args.task, args.concurrency))


if __name__ == "__main__":
    main()
