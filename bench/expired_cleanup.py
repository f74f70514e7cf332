"""Cleanup over many expired index entries: ``python -m bench.expired_cleanup [--entries 100000]``.

Fills owner indexes with ids whose job records are gone (as after a mass expiry), keeps
a few live jobs beside them, runs one cleanup and prints its time and peak memory: the
Python heap peak (tracemalloc) and the process's peak RSS growth. Cleanup reads in
batches, so the memory must stay flat as ``--entries`` grows; the time grows linearly.
Starts its own ``redis-server`` unless ``--redis-url`` is given (then it uses a fresh prefix).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from redis.asyncio import Redis

from broker.keys import Keys
from broker.queues import ensure_groups
from broker.scripts import Scripts
from broker.settings import load_settings
from broker.store import JobStore
from devtools.embedded_redis import EmbeddedRedis
from scheduler.cleanup import BATCH, Cleanup

_FILL_CHUNK = 10_000


@contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    """The given URL, or that of a fresh embedded ``redis-server``."""
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory() as folder, EmbeddedRedis(data_dir=folder) as server:
        yield server.url


_FILL = """
for i = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  redis.call('ZADD', KEYS[1], i, ARGV[1] .. i)
end
"""


async def fill(redis: Redis, keys: Keys, entries: int, owners: int) -> None:
    """``entries`` dangling ids spread over ``owners`` owner indexes (made inside Redis, so
    filling costs this process no memory and the RSS peak is the cleanup's own)."""
    per_owner = entries // owners
    for n in range(owners):
        for start in range(0, per_owner, _FILL_CHUNK):
            end = min(per_owner, start + _FILL_CHUNK) - 1
            await redis.eval(_FILL, 1, keys.owner_jobs(f"owner{n}", 0), f"gone-{n}-", start, end)  # type: ignore[misc]


def rss_kib() -> int:
    """Peak resident set size of this process so far (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def bench(url: str, entries: int, owners: int, batch: int) -> None:
    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    settings = load_settings({}, redis_url=url, prefix=prefix)
    redis = Redis.from_url(url)
    try:
        store = JobStore(redis, settings)
        await ensure_groups(redis, store.keys, ["default"])
        live = [
            (
                await store.create(
                    task="demo.noop", input_json=b"{}", owner=f"owner{n % owners}", queue="default"
                )
            )[0]
            for n in range(10)
        ]
        scripts = Scripts.register(redis, store.keys)
        await scripts.load_all()
        cleanup = Cleanup(redis, settings, scripts, batch=batch)

        await fill(redis, store.keys, entries, owners)
        rss_before = rss_kib()
        started = time.perf_counter()
        counts = await cleanup.run()
        seconds = time.perf_counter() - started
        rss_growth = rss_kib() - rss_before

        await fill(redis, store.keys, entries, owners)  # again, to measure the heap this time
        tracemalloc.start()
        await cleanup.run()
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        left = sum([await redis.zcard(store.keys.owner_jobs(f"owner{n}", 0)) for n in range(owners)])
        assert counts["index"] == entries // owners * owners, counts
        assert left == len(live), left
        print(f"cleanup of {counts['index']:,} expired index entries over {owners} owners (batch {batch}):")
        print(f"  time                {seconds:.3f} s  ({counts['index'] / seconds:,.0f} entries/s)")
        print(f"  peak Python heap    {peak / 1024:,.0f} KiB (tracemalloc, in a second, traced run)")
        print(f"  peak RSS growth     {rss_growth:,} KiB (ru_maxrss after - before; RSS {rss_kib():,} KiB)")
        print(f"  live ids kept       {left} of {len(live)}")
        await redis.delete(*[store.keys.owner_jobs(f"owner{n}", 0) for n in range(owners)])
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the benchmark once."""
    parser = argparse.ArgumentParser(prog="python -m bench.expired_cleanup", description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000, help="dangling ids (default: %(default)s)")
    parser.add_argument("--owners", type=int, default=10, help="owner indexes (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=BATCH, help="cleanup batch size (default: %(default)s)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    args = parser.parse_args(argv)
    with redis_url(args.redis_url) as url:
        asyncio.run(bench(url, args.entries, args.owners, args.batch))


if __name__ == "__main__":
    main()
