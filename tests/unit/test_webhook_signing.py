"""Completion webhooks without a server: the signature (checked by the standardwebhooks
package, an implementation of its own), the secret's format, the allowed hosts, the backoff."""

from __future__ import annotations

import base64
import os
import re
from datetime import UTC, datetime

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from broker.models import JobStatus, job_from_fields
from broker.settings import load_settings
from broker.webhook_signing import BadWebhookSecret, decode_secret, signature, webhook_headers
from broker.webhook_targets import parse_allowed_hosts, url_refusal, url_schema
from workers.webhook_sender import event_body, message_id, retry_delay_ms

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
HOSTS = "hooks.example.com, hooks.example.com:8443, http://127.0.0.1:9000, http://intranet, [::1]:7000"


def test_the_headers_verify_with_the_standard_webhooks_library() -> None:
    body = b'{"type":"job.succeeded","data":{"id":"x"}}'
    now = int(datetime.now(UTC).timestamp())
    headers = webhook_headers(decode_secret(SECRET), "msg_x", now, body)
    assert Webhook(SECRET).verify(body, headers) == msgspec.json.decode(body)
    assert headers["webhook-id"] == "msg_x" and headers["webhook-timestamp"] == str(now)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body + b" ", headers)  # any change to the body breaks it
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_the_signature_is_the_spec_example() -> None:
    """The example of the Standard Webhooks specification (its reference test vector)."""
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@pytest.mark.parametrize(
    "secret",
    ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()],
)
def test_a_secret_that_is_not_whsec_and_24_to_64_base64_bytes_is_refused(secret: str) -> None:
    with pytest.raises(BadWebhookSecret):
        decode_secret(secret)
    with pytest.raises(msgspec.ValidationError):
        load_settings({}, webhook_secret=secret)


def test_allowed_hosts_need_a_secret_and_entries_that_read() -> None:
    with pytest.raises(msgspec.ValidationError, match="needs webhook_secret"):
        load_settings({}, webhook_allowed_hosts="hooks.example.com")
    for entry in ("*.example.com", "https://hooks.example.com/path", "user@hooks.example.com", "h:99999"):
        with pytest.raises(msgspec.ValidationError):
            load_settings({}, webhook_allowed_hosts=entry, webhook_secret=SECRET)
    assert (
        load_settings({}, webhook_allowed_hosts=HOSTS, webhook_secret=SECRET).webhook_allowed_hosts == HOSTS
    )
    assert [entry.plain_http for entry in parse_allowed_hosts(HOSTS)] == [False, False, True, True, False]


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/jobs/done",
        "https://hooks.example.com",
        "https://hooks.example.com?x=1#f",
        "https://hooks.example.com:8443/jobs",
        "http://127.0.0.1:9000/cb",
        "https://127.0.0.1:9000/cb",
        "http://intranet/cb",
        "https://[::1]:7000/",
    ],
)
def test_urls_to_listed_hosts_are_allowed(url: str) -> None:
    assert url_refusal(url, HOSTS) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/jobs",  # plain http for a host not listed with http://
        "https://hooks.example.com:444/",  # another port
        "https://hooks.example.com.evil.example/",  # a suffix
        "https://evil.example/hooks.example.com",
        "https://hooks.example.com@evil.example/",  # user info
        "https://user:pw@hooks.example.com/",
        "https://hooks.example.com\\@evil.example/",
        "http://127.0.0.1:9001/",
        "http://127.0.0.1/",
        "http://localhost:9000/",
        "http://[::1]:7000/",
        "ftp://hooks.example.com/",
        "https://hooks.example.com/a b",
        "https://hooks.example.com/a\n",
        "https://HOOKS.example.com/",
        "https://hooks.example.com/" + "a" * 2048,
        "",
    ],
)
def test_anything_else_is_refused(url: str) -> None:
    assert url_refusal(url, HOSTS) is not None


def test_no_list_no_webhooks_and_the_schema_says_so() -> None:
    assert "off on this server" in (url_refusal("https://hooks.example.com/", "") or "")
    assert url_schema("")["type"] == "null"
    schema = url_schema(HOSTS)
    assert re.search(schema["pattern"], "https://hooks.example.com/x")
    assert not re.search(schema["pattern"], "https://hooks.example.com@evil.example/")


def test_the_event_body_is_the_job_with_its_type_and_end_time() -> None:
    fields = {
        "id": "j1",
        "type": "demo.fail",
        "status": "FAILURE",
        "owner": "alice",
        "queue": "default",
        "input": "{}",
        "error": '{"type":"DemoFailure","message":"no"}',
        "created_at": "1700000000000",
        "completed_at": "1700000001500",
        "version": "4",
        "callback_url": "https://hooks.example.com/x",
        "webhook_state": "pending",
    }
    event = msgspec.json.decode(event_body(job_from_fields(fields)))
    assert event["type"] == "job.failed"
    assert datetime.fromisoformat(event["timestamp"]) == datetime.fromtimestamp(1700000001.5, UTC)
    assert event["data"]["id"] == "j1" and event["data"]["status"] == JobStatus.FAILURE
    assert event["data"]["error"] == {"type": "DemoFailure", "message": "no"}
    assert message_id("j1") == "msg_j1"


def test_backoff_doubles_with_jitter_and_a_ceiling() -> None:
    for attempts, ceiling_ms in [(1, 1000), (2, 2000), (3, 4000), (20, 300_000)]:
        delays = {retry_delay_ms(attempts) for _ in range(50)}
        assert all(ceiling_ms / 2 <= d <= ceiling_ms for d in delays)
        assert len(delays) > 1  # jittered
