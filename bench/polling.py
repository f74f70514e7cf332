"""``polling``: ``GET /jobs/{id}`` req/s, with ``If-None-Match`` (304) and without (200).

One PENDING ``demo.noop`` job (no worker runs, so its ETag holds), one web process
(``web.app:app`` under uvicorn, ``JOBSTREAM_AUTH=none``), and the bare Litestar ``GET``
endpoint of ``bench.bare_app`` on the same server setup as the ceiling. The three are
interleaved over the rounds; wrk: 1 thread, 32 connections.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.common import Options, Report, bench_redis, job_store, jobstream_env, redis_version
from bench.http import Server, profile_notes, profile_server, uvicorn, wrk, wrk_report
from broker.settings import load_settings

PREFIX = "js:"


def _cases(
    web: Server, bare: Server, job_id: str, etag: str
) -> list[tuple[str, Server, str, dict[str, str]]]:
    return [
        ("GET /jobs/{id} -> 200", web, f"/jobs/{job_id}", {}),
        ("GET /jobs/{id} If-None-Match -> 304", web, f"/jobs/{job_id}", {"WRK_IF_NONE_MATCH": etag}),
        ("bare Litestar GET (ceiling)", bare, "/ping", {}),
    ]


def _check(web: Server, job_id: str) -> str:
    """The job answers 200 with an ETag, and 304 when that ETag is sent back."""
    first = httpx.get(f"{web.base_url}/jobs/{job_id}")
    first.raise_for_status()
    etag = first.headers["etag"]
    again = httpx.get(f"{web.base_url}/jobs/{job_id}", headers={"If-None-Match": etag})
    if again.status_code != 304:
        raise RuntimeError(f"If-None-Match {etag} answered {again.status_code}, not 304")
    return etag


async def _main(options: Options) -> Report:
    seconds = options.pick(2, 10, options.n)
    rounds = options.pick(1, 3, options.rounds)
    results: dict[str, list[dict[str, Any]]] = {}
    with bench_redis() as server, tempfile.TemporaryDirectory() as folder:
        version = redis_version(server.url)
        owner = load_settings({}).local_user
        async with job_store(server.url, PREFIX) as store:
            job, _ = await store.create(task="demo.noop", input_json=b"{}", owner=owner, queue="default")
        env = jobstream_env(server.url, PREFIX)
        log = Path(folder) / "web.log"
        with (
            uvicorn("web.app:app", env, log, "/healthz") as web,
            uvicorn("bench.bare_app:app", {}, log, "/ping") as bare,
        ):
            etag = _check(web, job.id)
            cases = _cases(web, bare, job.id, etag)
            for _ in range(rounds):
                for name, target, path, wrk_env in cases:
                    result = wrk(target, path, seconds, env=wrk_env, warmup=0.0 if results.get(name) else 1.0)
                    results.setdefault(name, []).append(result)
            profiles = {}
            if options.profile:
                for name, target, path, wrk_env in cases[:2]:
                    out = options.out / f"web-{'304' if wrk_env else '200'}-profile.txt"
                    profiles[name] = profile_server(target, path, seconds, wrk_env, out)
    title = f"polling: GET /jobs/{{id}}, {seconds} s x {rounds} round(s) each"
    notes = [line for name, prof in profiles.items() for line in profile_notes(f"web process, {name}", prof)]
    report = wrk_report("polling", title, results, seconds, rounds, version)
    report.notes += notes
    report.data["profiles"] = profiles
    return report


def run(options: Options) -> Report:
    """Run the scenario and return its report."""
    return asyncio.run(_main(options))
