"""``enqueue``: ``POST /jobs`` (``demo.noop``) req/s through the real HTTP server, against a ceiling.

One web process (``web.app:app`` under uvicorn, ``JOBSTREAM_AUTH=none``, and
``JOBSTREAM_MAX_ACTIVE_PER_OWNER=0`` because no worker drains the jobs the run creates),
and the bare Litestar ``POST`` endpoint of ``bench.bare_app`` reading the same body on the
same server setup as the ceiling; interleaved over the rounds. Every request creates a
real job (validation, Lua create script, record, index, stream entry, events). Target:
at least 50% of the ceiling's req/s.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.common import Options, Report, bench_redis, jobstream_env, redis_version
from bench.http import profile_notes, profile_server, uvicorn, wrk, wrk_report

PREFIX = "js:"
BODY = '{"type": "demo.noop", "input": {}}'


async def _main(options: Options) -> Report:
    seconds = options.pick(2, 10, options.n)
    rounds = options.pick(1, 3, options.rounds)
    results: dict[str, list[dict[str, Any]]] = {}
    post = {"WRK_METHOD": "POST", "WRK_BODY": BODY}
    with bench_redis() as server, tempfile.TemporaryDirectory() as folder:
        version = redis_version(server.url)
        env = jobstream_env(server.url, PREFIX, {"JOBSTREAM_MAX_ACTIVE_PER_OWNER": "0"})
        log = Path(folder) / "web.log"
        with (
            uvicorn("web.app:app", env, log, "/healthz") as web,
            uvicorn("bench.bare_app:app", {}, log, "/ping") as bare,
        ):
            first = httpx.post(
                f"{web.base_url}/jobs", content=BODY, headers={"Content-Type": "application/json"}
            )
            if first.status_code != 202:
                raise RuntimeError(f"POST /jobs answered {first.status_code}: {first.text}")
            cases = [
                ("POST /jobs demo.noop -> 202", web, "/jobs"),
                ("bare Litestar POST (ceiling)", bare, "/jobs"),
            ]
            for _ in range(rounds):
                for name, target, path in cases:
                    result = wrk(target, path, seconds, env=post, warmup=0.0 if results.get(name) else 1.0)
                    results.setdefault(name, []).append(result)
            profile = (
                profile_server(web, "/jobs", seconds, post, options.out / "web-enqueue-profile.txt")
                if options.profile
                else None
            )
    ours = sorted(r["rps"] for r in results[cases[0][0]])[len(results[cases[0][0]]) // 2]
    ceiling = sorted(r["rps"] for r in results[cases[1][0]])[len(results[cases[1][0]]) // 2]
    title = f"enqueue: POST /jobs, {seconds} s x {rounds} round(s) each"
    notes = [f"POST /jobs reaches {100 * ours / ceiling:.0f}% of the bare endpoint's req/s (target: 50%)."]
    report = wrk_report("enqueue", title, results, seconds, rounds, version, notes)
    report.data["ratio_to_ceiling"] = ours / ceiling
    if profile is not None:
        report.notes += profile_notes("web process, POST /jobs", profile)
        report.data["profile"] = profile
    return report


def run(options: Options) -> Report:
    """Run the scenario and return its report."""
    return asyncio.run(_main(options))
