"""Who may call what: every route against every kind of credential, on a real server in JWT mode.

Each row is a credential (none, expired, forged, ``alg: none``, a stream token where a bearer
token belongs, the ``Token`` scheme, another owner, the owner, an admin, the metrics
token...), each column a route; a cell is the status the route must answer. Job routes get
a fresh job of alice's for every cell, so no cell depends on another's side effects. The
server's log must show no token and no traceback afterwards.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from broker.settings import Settings, load_settings
from devtools.embedded_redis import EmbeddedRedis
from tests.support.procs import WebServer
from tests.support.web_support import SECRET, assert_hidden
from web.auth import make_token

pytestmark = pytest.mark.timeout(60)

METRICS_TOKEN = "metrics-scraper-token-of-32-bytes-or-more"
_PATH_PARAMETER = re.compile(r"{\w+}")
SETTINGS: Settings = load_settings({}, auth="jwt", jwt_secret=SECRET)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # {job} stands for a job of alice's
    kind: str  # public, job, own, operator, metrics, owner_listing
    ok: int  # what alice (or an admin) gets

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


ROUTES = [
    Route("GET", "/healthz", "public", 200),
    Route("GET", "/readyz", "public", 200),
    Route("GET", "/", "public", 200),
    Route("GET", "/schema/openapi.json", "public", 200),
    Route("POST", "/jobs", "own", 202),
    Route("GET", "/jobs", "own", 200),
    Route("GET", "/tasks", "own", 200),
    Route("POST", "/events/stream-token", "own", 201),
    Route("GET", "/events", "own", 200),
    Route("GET", "/jobs/{job}", "job", 200),
    Route("GET", "/jobs/{job}?wait=0.2", "job", 200),
    Route("GET", "/jobs/{job}/result", "job", 202),
    Route("POST", "/jobs/{job}/cancel", "job", 200),
    Route("POST", "/jobs/{job}/stream-token", "job", 201),
    Route("GET", "/jobs/{job}/events", "job", 200),
    Route("GET", "/jobs?owner=alice", "owner_listing", 200),
    Route("GET", "/workers", "operator", 200),
    Route("GET", "/queues", "operator", 200),
    Route("GET", "/metrics", "metrics", 200),
    Route("GET", "/events/stats", "metrics", 200),
]


def _expected(row: str, route: Route) -> int:
    """The status ``route`` must answer the credential ``row``."""
    if route.kind == "public":
        return 200
    if row in {"alice", "alice-lowercase-scheme"}:
        return 403 if route.kind in {"operator", "metrics"} else route.ok
    if row == "admin":
        return route.ok
    if row == "bob":
        return {"job": 404, "own": route.ok}.get(route.kind, 403)
    if row == "metrics-token":
        return 200 if route.kind == "metrics" else 401
    return 401  # no valid bearer credential at all


def _forged(**changes: object) -> str:
    now = datetime.now(UTC)
    claims: dict[str, object] = {"sub": "alice", "iat": now, "exp": now + timedelta(minutes=5), "roles": []}
    claims.update(changes)
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _unsigned(sub: str, roles: list[str]) -> str:
    """A token with ``alg: none`` and no signature (RFC 7519 section 6)."""
    part = lambda data: base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()  # noqa: E731
    exp = int((datetime.now(UTC) + timedelta(minutes=5)).timestamp())
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': sub, 'roles': roles, 'exp': exp})}."


ALICE = make_token(SETTINGS, "alice")
ADMIN = make_token(SETTINGS, "root", [SETTINGS.admin_role])
BEARERS: dict[str, dict[str, str]] = {
    "anonymous": {},
    "expired": {"Authorization": f"Bearer {make_token(SETTINGS, 'alice', ttl=timedelta(seconds=-30))}"},
    "wrong-signature": {
        "Authorization": "Bearer "
        + jwt.encode({"sub": "root", "roles": ["admin"], "exp": 4102444800}, "another-secret-" * 4)
    },
    "alg-none-admin": {"Authorization": f"Bearer {_unsigned('root', ['admin'])}"},
    "not-yet-valid": {"Authorization": f"Bearer {_forged(nbf=datetime.now(UTC) + timedelta(hours=1))}"},
    "token-scheme": {"Authorization": f"Token {ALICE}"},
    "basic-scheme": {"Authorization": "Basic YWxpY2U6cHc="},
    "no-credential": {"Authorization": "Bearer"},
    "garbage": {"Authorization": "Bearer not.a.jwt"},
    "alice": {"Authorization": f"Bearer {ALICE}"},
    "alice-lowercase-scheme": {"Authorization": f"bearer {ALICE}"},
    "bob": {"Authorization": f"Bearer {make_token(SETTINGS, 'bob')}"},
    "admin": {"Authorization": f"Bearer {ADMIN}"},
    "metrics-token": {"Authorization": f"Bearer {METRICS_TOKEN}"},
}
ROWS = [*BEARERS, "stream-token-as-bearer", "owner-stream-token-as-bearer"]


@pytest.fixture(scope="module")
def server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """The app under uvicorn in JWT mode, with a metrics token and its access log on."""
    log = tmp_path_factory.mktemp("matrix") / "web.log"
    env = {
        "JOBSTREAM_AUTH": "jwt",
        "JOBSTREAM_JWT_SECRET": SECRET,
        "JOBSTREAM_METRICS_TOKEN": METRICS_TOKEN,
    }
    web = WebServer(redis_server.url, f"t{uuid.uuid4().hex[:8]}:", env, log, log_level="info")
    try:
        web.start()
        yield web.url, log
    finally:
        web.close()


async def _status(http: httpx.AsyncClient, method: str, url: str, headers: dict[str, str]) -> int:
    """The status of one request; a stream is left as soon as its head has come."""
    body = {"type": "demo.sleep"} if (method, url) == ("POST", "/jobs") else None
    async with http.stream(method, url, headers=headers, json=body) as response:
        return response.status_code


async def _alices_job(http: httpx.AsyncClient) -> dict[str, str]:
    response = await http.post("/jobs", json={"type": "demo.sleep"}, headers=BEARERS["alice"])
    assert response.status_code == 202, response.text
    job: dict[str, str] = response.json()
    return job


async def _headers_for(http: httpx.AsyncClient, row: str) -> dict[str, str]:
    if row == "stream-token-as-bearer":
        return {"Authorization": f"Bearer {(await _alices_job(http))['stream_token']}"}
    if row == "owner-stream-token-as-bearer":
        grant = await http.post("/events/stream-token", headers=BEARERS["alice"])
        return {"Authorization": f"Bearer {grant.json()['token']}"}
    return BEARERS[row]


@pytest.mark.parametrize("row", ROWS)
async def test_every_route_answers_each_credential_as_it_must(row: str, server: tuple[str, Path]) -> None:
    base_url, _ = server
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        headers = await _headers_for(http, row)
        for route in ROUTES:
            url = route.path
            if "{job}" in url:
                url = url.format(job=(await _alices_job(http))["id"])
            got = await _status(http, route.method, url, headers)
            if got != _expected(row, route):
                wrong.append(f"{route.label}: {got}, expected {_expected(row, route)}")
    assert not wrong, f"{row}:\n" + "\n".join(wrong)


async def test_another_owners_job_answers_as_a_job_that_does_not_exist(server: tuple[str, Path]) -> None:
    """Every job route's 404 for bob on alice's job is, body and all, the 404 for an unknown id."""
    base_url, _ = server
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        for route in [route for route in ROUTES if route.kind == "job"]:
            job_id = (await _alices_job(http))["id"]
            path = route.path.replace("{job}", "{id}")
            await assert_hidden(http, route.method, path, job_id, BEARERS["bob"])


QUERY_ROWS = {
    # (which stream token, route) -> status
    ("job-token", "/jobs/{job}/events"): 200,
    ("job-token", "/jobs/{other}/events"): 403,
    ("job-token", "/events"): 403,
    ("alice-owner-token", "/jobs/{job}/events"): 200,
    ("alice-owner-token", "/events"): 200,
    ("bob-owner-token", "/jobs/{job}/events"): 404,
    ("bearer-jwt", "/jobs/{job}/events"): 401,
    ("bearer-jwt", "/events"): 401,
    ("job-token", "/jobs/{job}"): 401,  # only the SSE routes read a stream token
    ("alice-owner-token", "/jobs"): 401,
}


async def test_stream_tokens_in_the_query_open_their_streams_only(server: tuple[str, Path]) -> None:
    base_url, log = server
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        job, other = await _alices_job(http), await _alices_job(http)
        owner_grant = await http.post("/events/stream-token", headers=BEARERS["alice"])
        bob_grant = await http.post("/events/stream-token", headers=BEARERS["bob"])
        tokens = {
            "job-token": job["stream_token"],
            "alice-owner-token": owner_grant.json()["token"],
            "bob-owner-token": bob_grant.json()["token"],
            "bearer-jwt": ALICE,
        }
        for (which, path), expected in QUERY_ROWS.items():
            for name in ("token", "%74oken", "TOKEN", "access%5Ftoken"):
                url = path.format(job=job["id"], other=other["id"]) + f"?{name}={tokens[which]}"
                got = await _status(http, "GET", url, {})
                if got != expected:
                    wrong.append(f"{which} as ?{name}= on {path}: {got}, expected {expected}")
        twice = f"/jobs/{job['id']}/events?token={job['stream_token']}&%74oken={job['stream_token']}"
        if (got := await _status(http, "GET", twice, {})) != 401:
            wrong.append(f"two token parameters: {got}, expected 401")
        await http.get("/healthz")  # the lines before it are in the log by now
    assert not wrong, "\n".join(wrong)
    text = log.read_text()
    for name in ("token", "%74oken", "TOKEN", "access%5Ftoken"):
        assert f"?{name}=[redacted]" in text, f"no access-log line shows ?{name}= redacted"
    assert not re.search(r"eyJ[\w-]+\.[\w-]+\.[\w-]*", text), "a token reached the log"
    assert "Traceback" not in text


async def test_the_metrics_token_reads_metrics_and_nothing_else(server: tuple[str, Path]) -> None:
    base_url, _ = server
    scraper = BEARERS["metrics-token"]
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        metrics = await http.get("/metrics", headers=scraper)
        assert metrics.status_code == 200
        assert "jobstream_queue_waiting" in metrics.text
        assert (await http.get("/events/stats", headers=scraper)).json()["hub"]["connected"] is True
        almost = {"Authorization": f"Bearer {METRICS_TOKEN}x"}
        assert (await http.get("/metrics", headers=almost)).status_code == 401
        token_scheme = {"Authorization": f"Token {METRICS_TOKEN}"}
        assert (await http.get("/metrics", headers=token_scheme)).status_code == 401


def test_the_matrix_covers_every_documented_route(server: tuple[str, Path]) -> None:
    """A new route must join the matrix: the document's operations are all in it."""
    base_url, _ = server
    spec = httpx.get(f"{base_url}/schema/openapi.json").json()
    documented = {
        f"{method.upper()} {_PATH_PARAMETER.sub('{job}', path)}"
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert documented <= {route.label.split("?")[0] for route in ROUTES}
