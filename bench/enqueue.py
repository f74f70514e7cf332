"""``enqueue``: ``POST /jobs`` (``demo.noop``) req/s through the real HTTP server, against a ceiling.

Two web processes (``web.app:app`` under uvicorn; ``JOBSTREAM_MAX_ACTIVE_PER_OWNER=0``
because no worker drains the jobs the run creates): one with ``JOBSTREAM_AUTH=none``, one
with ``JOBSTREAM_AUTH=jwt`` and a bearer token on every request (its answers carry a
stream token; the no-auth ones do not need one). The bare Litestar ``POST`` endpoint of
``bench.bare_app``, reading the same body on the same server setup, is the ceiling; all
three are interleaved over the rounds. Every request creates a real job (validation, Lua
create script, record, index, stream entry, events). Target: at least 50% of the
ceiling's req/s.
"""

from __future__ import annotations

import asyncio
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.common import Options, Report, bench_redis, jobstream_env, redis_version
from bench.http import Server, profile_notes, profile_server, uvicorn, wrk, wrk_report
from broker.settings import load_settings
from web.auth import make_token

PREFIX = "js:"
BODY = '{"type": "demo.noop", "input": {}}'
SECRET = "bench-only-secret-of-at-least-32-bytes"
POST = {"WRK_METHOD": "POST", "WRK_BODY": BODY}

Case = tuple[str, Server, dict[str, str]]


def _check(case: Case) -> None:
    """The route answers 202 before it is measured."""
    name, server, wrk_env = case
    headers = {"Content-Type": "application/json"}
    if "WRK_AUTHORIZATION" in wrk_env:
        headers["Authorization"] = wrk_env["WRK_AUTHORIZATION"]
    first = httpx.post(f"{server.base_url}/jobs", content=BODY, headers=headers)
    if first.status_code != 202:
        raise RuntimeError(f"{name} answered {first.status_code}: {first.text}")


def _open(stack: ExitStack, redis_url: str, log: Path) -> list[Case]:
    quota = {"JOBSTREAM_MAX_ACTIVE_PER_OWNER": "0"}
    jwt_mode = {**quota, "JOBSTREAM_AUTH": "jwt", "JOBSTREAM_JWT_SECRET": SECRET}
    token = make_token(load_settings({}, auth="jwt", jwt_secret=SECRET), "bench")
    open_web = stack.enter_context(
        uvicorn("web.app:app", jobstream_env(redis_url, PREFIX, quota), log, "/healthz")
    )
    jwt_web = stack.enter_context(
        uvicorn("web.app:app", jobstream_env(redis_url, PREFIX, jwt_mode), log, "/healthz")
    )
    bare = stack.enter_context(uvicorn("bench.bare_app:app", {}, log, "/ping"))
    return [
        ("POST /jobs demo.noop -> 202 (auth none)", open_web, POST),
        (
            "POST /jobs demo.noop -> 202 (JWT bearer)",
            jwt_web,
            {**POST, "WRK_AUTHORIZATION": f"Bearer {token}"},
        ),
        ("bare Litestar POST (ceiling)", bare, POST),
    ]


async def _main(options: Options) -> Report:
    seconds = options.pick(2, 10, options.n)
    rounds = options.pick(1, 3, options.rounds)
    results: dict[str, list[dict[str, Any]]] = {}
    profiles: dict[str, dict[str, Any]] = {}
    with bench_redis() as server, tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        version = redis_version(server.url)
        cases = _open(stack, server.url, Path(folder) / "web.log")
        for case in cases:
            _check(case)
        for _ in range(rounds):
            for name, target, wrk_env in cases:
                result = wrk(target, "/jobs", seconds, env=wrk_env, warmup=0.0 if results.get(name) else 1.0)
                results.setdefault(name, []).append(result)
        if options.profile:
            for (name, target, wrk_env), mode in zip(cases[:2], ("none", "jwt"), strict=True):
                out = options.out / f"web-enqueue-{mode}-profile.txt"
                profiles[name] = profile_server(target, "/jobs", seconds, wrk_env, out)
    medians = {name: sorted(r["rps"] for r in runs)[len(runs) // 2] for name, runs in results.items()}
    ceiling = medians[cases[-1][0]]
    title = f"enqueue: POST /jobs, {seconds} s x {rounds} round(s) each"
    notes = [
        f"{name.removeprefix('POST /jobs demo.noop -> 202 ')}: POST /jobs reaches "
        f"{100 * medians[name] / ceiling:.0f}% of the bare endpoint's req/s (target: 50%)."
        for name, _, _ in cases[:2]
    ]
    report = wrk_report("enqueue", title, results, seconds, rounds, version, notes)
    report.data["ratio_to_ceiling"] = medians[cases[0][0]] / ceiling
    report.data["ratio_to_ceiling_jwt"] = medians[cases[1][0]] / ceiling
    for name, profile in profiles.items():
        report.notes += profile_notes(f"web process, {name}", profile)
    report.data["profiles"] = profiles
    return report


def run(options: Options) -> Report:
    """Run the scenario and return its report."""
    return asyncio.run(_main(options))
