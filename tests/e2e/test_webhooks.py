"""Completion webhooks end to end: web and worker processes, and a receiver on 127.0.0.1.

Signatures are checked with the ``standardwebhooks`` package (not our signing code). The
module shares one web process and one worker (timeout 1 s per attempt, lease 2 s); the
test that kills a sender mid-delivery has processes of its own.
"""

from __future__ import annotations

import base64
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from standardwebhooks.webhooks import Webhook

from devtools.embedded_redis import EmbeddedRedis
from tests.e2e.conftest import MakeStack
from tests.support.procs import WebServer, start_worker, stop
from tests.support.web_stack import WebStack, stack_env
from tests.support.webhook_receiver import Received, WebhookReceiver, running_receiver

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec_" + base64.b64encode(b"e2e-webhook-signing-key-32-bytes").decode()
CHANGES_AFTER_THE_END = {"webhook", "version", "updated_at", "expires_at"}
"""What the delivery's own progress changes on the job after the event was made."""


def webhook_env(receiver: WebhookReceiver, timeout: str = "1") -> dict[str, str]:
    return stack_env(
        webhook_allowed_hosts=receiver.allowed_hosts, webhook_secret=SECRET, webhook_timeout_seconds=timeout
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with running_receiver() as r:
        yield r


@pytest.fixture(scope="module")
def hook_server(
    redis_server: EmbeddedRedis, receiver: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    log = tmp_path_factory.mktemp("webhooks") / "processes.log"
    server = WebServer(redis_server.url, f"w{uuid.uuid4().hex[:8]}:", webhook_env(receiver), log, "info")
    worker = None
    try:
        server.start()
        worker = start_worker(server.redis_url, server.prefix, env=server.env, log=log)
        yield server
    finally:
        if worker is not None:
            stop(worker)
        server.close()


@pytest_asyncio.fixture
async def stack(hook_server: WebServer) -> AsyncIterator[WebStack]:
    handle = WebStack.joining(hook_server)
    try:
        yield handle
    finally:
        await handle.aclose()


def verified(received: Received) -> dict[str, Any]:
    """The event, once its signature verifies (``standardwebhooks`` raises if it does not)."""
    event: dict[str, Any] = Webhook(SECRET).verify(received.body, received.headers)
    return event


def delivered(job: dict[str, Any]) -> bool:
    return job["webhook"]["state"] in ("delivered", "failed")


def without(job: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    return {name: value for name, value in job.items() if name not in fields}


async def test_a_finished_job_posts_one_signed_event_carrying_the_job(
    stack: WebStack, receiver: WebhookReceiver
) -> None:
    url = receiver.path()
    created = await stack.create("demo.sleep", {"seconds": 0.05, "steps": 1}, fields={"callback_url": url})
    assert created["webhook"] == {
        "url": url,
        "state": "waiting",
        "attempts": 0,
        "last_error": None,
        "next_attempt_at": None,
        "delivered_at": None,
    }
    (received,) = await receiver.wait_for(url, 1)
    event = verified(received)
    assert received.headers["webhook-id"] == f"msg_{created['id']}"
    assert received.headers["content-type"] == "application/json"
    job = await stack.wait(created["id"], delivered)
    assert job["webhook"]["state"] == "delivered" and job["webhook"]["attempts"] == 1
    assert job["webhook"]["delivered_at"] is not None and job["webhook"]["last_error"] is None
    assert event["type"] == "job.succeeded"
    assert event["timestamp"] == job["completed_at"]
    # The stored job (your backend receives it): its worker too, which the owner's view hides.
    assert job["worker"] is None and event["data"]["worker"]
    ignored = CHANGES_AFTER_THE_END | {"worker"}
    assert without(event["data"], ignored) == without(job, ignored)
    assert event["data"]["result"] == {"slept": 0.05}
    assert event["data"]["webhook"]["state"] == "pending"  # the job as it was when it ended
    assert job["version"] == event["data"]["version"] + 1  # the delivery is one change, published
    assert len(receiver.received(url)) == 1


async def test_a_receiver_that_answers_500_first_gets_it_again_then_it_is_delivered(
    stack: WebStack, receiver: WebhookReceiver
) -> None:
    url = receiver.path(statuses=[500])
    created = await stack.create("demo.noop", fields={"callback_url": url})
    first, second = await receiver.wait_for(url, 2)
    assert verified(first) == verified(second)
    assert first.body == second.body  # the same message, byte for byte
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"msg_{created['id']}"
    job = await stack.wait(created["id"], delivered)
    assert job["webhook"]["state"] == "delivered"
    assert job["webhook"]["attempts"] == 2
    assert job["webhook"]["next_attempt_at"] is None
    assert len(receiver.received(url)) == 2


async def test_failure_and_cancel_send_their_own_events(stack: WebStack, receiver: WebhookReceiver) -> None:
    failing, cancelling = receiver.path(), receiver.path()
    failed = await stack.create("demo.fail", {"message": "no luck"}, fields={"callback_url": failing})
    waiting = await stack.create("demo.noop", fields={"callback_url": cancelling, "delay_seconds": 600})
    cancel = await stack.http.post(f"/jobs/{waiting['id']}/cancel")
    assert cancel.status_code == 200 and cancel.json()["status"] == "CANCELLED"
    (failure,) = await receiver.wait_for(failing, 1)
    (cancelled,) = await receiver.wait_for(cancelling, 1)
    failure_event, cancel_event = verified(failure), verified(cancelled)
    assert failure_event["type"] == "job.failed"
    assert failure_event["data"]["id"] == failed["id"]
    assert failure_event["data"]["error"]["message"] == "no luck"
    assert cancel_event["type"] == "job.cancelled"
    assert cancel_event["data"]["id"] == waiting["id"] and cancel_event["data"]["status"] == "CANCELLED"
    for job_id in (failed["id"], waiting["id"]):
        assert (await stack.wait(job_id, delivered))["webhook"]["state"] == "delivered"


@pytest.mark.parametrize(
    "target",
    [
        "https://elsewhere.example/hooks",  # not listed
        "http://127.0.0.1:{other}/hooks",  # the listed address on another port
        "http://localhost:{port}/hooks",  # another name for it
        "http://127.0.0.1:{port}@elsewhere.example/hooks",  # user info
        "ftp://127.0.0.1:{port}/hooks",
    ],
)
async def test_a_callback_url_to_a_host_not_on_the_list_is_refused_with_422(
    stack: WebStack, receiver: WebhookReceiver, target: str
) -> None:
    url = target.format(port=receiver.port, other=receiver.port + 1)
    response = await stack.http.post("/jobs", json={"type": "demo.noop", "callback_url": url})
    assert response.status_code == 422, response.text
    assert response.json()["type"] == "urn:jobstream:problem:invalid-callback-url"
    listed = await stack.http.get("/jobs", params={"task": "demo.noop", "limit": 100})
    assert all(job["webhook"] is None or job["webhook"]["url"] != url for job in listed.json()["jobs"])


async def test_a_callback_url_that_is_not_a_string_is_refused_with_422(stack: WebStack) -> None:
    response = await stack.http.post("/jobs", json={"type": "demo.noop", "callback_url": 5})
    assert response.status_code == 422


async def test_webhooks_are_off_without_a_list(sse_stack: MakeStack) -> None:
    stack = await sse_stack()
    response = await stack.http.post(
        "/jobs", json={"type": "demo.noop", "callback_url": "https://x.example/"}
    )
    assert response.status_code == 422
    assert "off on this server" in response.json()["detail"]
    schema = (await stack.http.get("/schema/openapi.json")).json()
    body = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][0]["properties"]["callback_url"]["type"] == "null"


async def test_a_sender_killed_mid_delivery_is_followed_by_another(
    sse_stack: MakeStack, receiver: WebhookReceiver
) -> None:
    env = {
        name.removeprefix("JOBSTREAM_").lower(): value for name, value in webhook_env(receiver, "3").items()
    }
    stack = await sse_stack(**env)
    url = receiver.path(hold=1)
    first_worker = stack.start_worker()
    created = await stack.create("demo.noop", fields={"callback_url": url})
    await receiver.wait_for(url, 1)  # the first attempt is in flight, and held there
    stop(first_worker, signal.SIGKILL)
    receiver.release(url)
    stack.start_worker()
    first, second = await receiver.wait_for(url, 2, timeout=30)  # once the 6 s lease is over
    assert first.body == second.body and first.headers["webhook-id"] == second.headers["webhook-id"]
    job = await stack.wait(created["id"], delivered)
    assert job["webhook"]["state"] == "delivered"
    assert job["webhook"]["attempts"] == 1  # the killed attempt never came to an outcome
    assert msgspec.json.decode(second.body)["data"]["id"] == created["id"]
