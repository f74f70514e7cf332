"""The OpenAPI document is the truth: schemathesis, with all its checks, against a real server.

The app runs under uvicorn (as in production) in JWT mode (with a metrics token) and in
no-auth mode; schemathesis reads ``/schema/openapi.json`` and sends what it documents,
valid and invalid, operation by operation and then in stateful sequences along the links
it infers (create, then read, cancel, stream...). Any check failing, a 5xx included, fails
the test. The seed and the number of examples are fixed, so a run is repeatable and short.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis import engine
from schemathesis.engine import Status
from schemathesis.engine.events import FatalError, FuzzScenarioFinished, NonFatalError, ScenarioFinished

from broker.settings import load_settings
from tests.support.procs import WebServer
from tests.support.web_support import SECRET
from web.auth import make_token

pytestmark = pytest.mark.timeout(120)

SEED = 20_261_124
EXAMPLES = 15
"""Examples per operation and phase: with the coverage phase and the stateful runs, about 650
cases a mode (seed 20261124)."""
METRICS_TOKEN = "metrics-scraper-token-of-32-bytes-or-more"


def _serve(redis_url: str, log: Path, env: dict[str, str]) -> Iterator[str]:
    server = WebServer(redis_url, f"t{uuid.uuid4().hex[:8]}:", env, log)
    try:
        server.start()
        yield server.url
    finally:
        server.close()


def _run_at_now(context: Any, body: Any) -> Any:
    """How far ahead ``run_at`` may be counts from now, which no schema can say: a valid
    date-time is moved to a minute ahead (an invalid one stays invalid). Only the fuzzing
    phase calls this hook; the coverage phase's date-times are in the past (run now)."""
    if isinstance(body, dict) and isinstance(body.get("run_at"), str):
        try:
            datetime.fromisoformat(body["run_at"].replace("Z", "+00:00"))
        except ValueError:
            return body
        body["run_at"] = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    return body


CREATE_ACCEPTS = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx", "422"]
"""schemathesis's default statuses for a schema-valid request, plus 422 for ``POST /jobs``
only: an ``Idempotency-Key`` sent again with another body is refused, which no schema can
say. :func:`refused_valid_create_is_a_key_reuse` makes sure such a 422 is that and nothing else."""


@schemathesis.check
def refused_valid_create_is_a_key_reuse(ctx: Any, response: Any, case: Any) -> None:
    """A schema-valid create answered 422 was a reused Idempotency-Key, never anything else."""
    meta = case.meta
    if (case.method, case.path) != ("POST", "/jobs") or response.status_code != 422 or meta is None:
        return
    if meta.generation.mode.is_positive:
        problem_type = response.json().get("type")
        if problem_type != "urn:jobstream:problem:idempotency-key-reused":
            raise AssertionError(f"a schema-valid create was refused with 422 {problem_type}")


def _schema(base_url: str, headers: dict[str, str]) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},  # nothing carried over from an earlier run: repeatable
            "headers": headers,
            "checks": {"enabled": True},
            "generation": {"max-examples": EXAMPLES},
            "max-stream-events": 1,
            "request-timeout": 10,
            "workers": 1,
            "operations": [
                {
                    "include-path": "/jobs",
                    "include-method": "POST",
                    "checks": {"positive_data_acceptance": {"expected-statuses": CREATE_ACCEPTS}},
                }
            ],
        }
    )
    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json", config=config)
    schema.hook("map_body")(_run_at_now)
    return schema


def run_schemathesis(schema: Any) -> tuple[int, list[str]]:
    """Every phase (examples, coverage, fuzzing, stateful) with every check, as ``st run
    --checks all`` does: how many cases ran, and a line for each failure or error."""
    cases, problems = 0, []
    for event in engine.from_schema(schema).execute():
        if isinstance(event, ScenarioFinished | FuzzScenarioFinished):
            cases += len(event.recorder.cases)
            for checks in event.recorder.checks.values():
                problems += [
                    f"{event.recorder.label}: {check.name}: {check.failure_info.failure.title}\n"
                    f"{check.failure_info.code_sample}"
                    for check in checks
                    if check.status is Status.FAILURE and check.failure_info is not None
                ]
        elif isinstance(event, NonFatalError | FatalError):
            problems.append(f"{getattr(event, 'label', 'run')}: error: {event.info.format()}")
    return cases, problems


def _mode(mode: str) -> tuple[dict[str, str], dict[str, str]]:
    """The server's environment and schemathesis's headers: an admin's token in JWT mode."""
    if mode == "none":
        return {"JOBSTREAM_AUTH": "none"}, {}
    admin = make_token(load_settings({}, auth="jwt", jwt_secret=SECRET), "root", ["admin"])
    env = {"JOBSTREAM_AUTH": "jwt", "JOBSTREAM_JWT_SECRET": SECRET, "JOBSTREAM_METRICS_TOKEN": METRICS_TOKEN}
    return env, {"Authorization": f"Bearer {admin}"}


@pytest.mark.parametrize("mode", ["jwt", "none"])
def test_the_server_answers_as_its_openapi_document_says(mode: str, redis_url: str, tmp_path: Path) -> None:
    env, headers = _mode(mode)
    log = tmp_path / "web.log"
    for base_url in _serve(redis_url, log, env):
        cases, problems = run_schemathesis(_schema(base_url, headers))
    print(f"schemathesis, {mode} mode, seed {SEED}: {cases} cases")
    assert not problems, "\n\n".join(problems)
    assert cases > 300, cases
    assert "Traceback" not in log.read_text()
