"""Logs of the web app and a worker written to a file (no terminal): every line is one JSON object,
a worker's lines name the job (id, type, owner, attempt) and the worker, the web's name the
request, and no token ever shows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import MakeStack
from tests.support.polling import until
from tests.support.web_stack import terminal
from tests.support.web_support import new_user

pytestmark = pytest.mark.timeout(60)


def lines(text: str) -> list[dict[str, Any]]:
    """Every line, parsed (fails on the first that is not a JSON object)."""
    parsed = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= entry.keys(), line
        parsed.append(entry)
    return parsed


async def test_web_and_worker_lines_are_json_with_the_job_worker_and_request(sse_stack: MakeStack) -> None:
    stack = await sse_stack(jwt=True, log_format="auto")  # the default: JSON, the log being a file
    alice, admin = new_user(), new_user(admin=True)
    stack.start_worker()
    created = await stack.http.post(
        "/jobs",
        json={"type": "demo.fail", "input": {"message": "on purpose"}},
        headers={**alice.headers, "X-Request-ID": "req-42"},
    )
    assert created.status_code == 202 and created.headers["x-request-id"] == "req-42"
    job = created.json()
    token = job["stream_token"]
    streamed = await stack.http.get(f"/jobs/{job['id']}/events?token={token}")  # ends: the job has ended
    generated = streamed.headers["x-request-id"]
    assert generated and generated != "req-42"
    failed = await until(lambda: _ended(stack, job["id"], admin.headers), 20, "the job to fail", stack.tail)
    await stack.http.get("/healthz")  # the lines before it are in the log by now

    text = stack.log_text()
    entries = lines(text)
    for secret in (token, alice.token, admin.token):
        assert secret not in text
    attempt = [e for e in entries if e.get("job_id") == job["id"] and e["level"] == "ERROR"]
    assert attempt, text[-3000:]
    assert attempt[0] | {"job_type": "demo.fail", "owner": alice.name, "attempt": 1} == attempt[0]
    assert attempt[0]["worker"] == failed["worker"]
    assert "DemoFailure: on purpose" in attempt[0]["message"] + attempt[0].get("exc", "")
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert any(e.get("request_id") == "req-42" and "POST /jobs" in e["message"] for e in access), access
    assert any(e.get("request_id") == generated and "token=[redacted]" in e["message"] for e in access)


async def _ended(stack: Any, job_id: str, headers: dict[str, str]) -> dict[str, Any] | None:
    job: dict[str, Any] = await stack.job(job_id, **headers)
    return job if terminal(job) else None
