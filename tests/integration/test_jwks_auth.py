"""Bearer JWTs of an identity provider, verified against a JWKS served on 127.0.0.1 (RS256)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from litestar import Litestar
from litestar.testing import AsyncTestClient

from broker.settings import Settings
from tests.support.procs import listening_socket
from tests.support.web_support import web_settings
from web.app import create_app
from web.live.stream_tokens import STREAM_AUDIENCE

ISSUER = "https://idp.example.com/"
AUDIENCE = "jobstream-api"
KID = "key-1"

Client = AsyncTestClient[Litestar]


class Jwks:
    """A JWKS endpoint in a thread, counting its fetches; ``down`` makes it answer 503."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        self.document = {"keys": [{**public, "kid": KID, "use": "sig", "alg": "RS256"}]}
        self.fetches = 0
        self.down = False
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                body = json.dumps(jwks.document).encode()
                self.send_response(503 if jwks.down else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        sock = listening_socket()
        self.server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def token(self, sub: str = "alice", *, key: Any = None, kid: str = KID, **claims: Any) -> str:
        now = int(time.time())
        payload = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600, **claims}
        return jwt.encode(payload, key or self.private_key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    server = Jwks()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def settings(redis_url: str, prefix: str, jwks: Jwks) -> Settings:
    return web_settings(
        redis_url,
        prefix,
        auth="jwt",
        jwks_url=jwks.url,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        stream_token_secret="s" * 32,
        jwt_roles_claim="realm_access.roles",
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_valid_token_is_the_caller(client: Client, jwks: Jwks) -> None:
    body = {"type": "demo.noop", "input": {}}
    created = await client.post("/jobs", json=body, headers=bearer(jwks.token()))
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["owner"] == "alice"
    stream_claims = jwt.decode(job["stream_token"], "s" * 32, algorithms=["HS256"], audience=STREAM_AUDIENCE)
    assert stream_claims["sub"] == "alice"  # minted with JOBSTREAM_STREAM_TOKEN_SECRET
    bob = await client.get(f"/jobs/{job['id']}", headers=bearer(jwks.token("bob")))
    assert bob.status_code == 404
    admin = jwks.token("root", realm_access={"roles": ["admin"]})
    assert (await client.get(f"/jobs/{job['id']}", headers=bearer(admin))).status_code == 200


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://other-idp.example.com/"},
        {"aud": "another-app"},
        {"exp": int(time.time()) - 60},
        {"realm_access": {"roles": "admin"}},  # roles must be a list
    ],
    ids=["issuer", "audience", "expired", "malformed-roles"],
)
async def test_a_token_with_wrong_claims_is_401(client: Client, jwks: Jwks, claims: dict[str, Any]) -> None:
    assert (await client.get("/jobs", headers=bearer(jwks.token(**claims)))).status_code == 401


async def test_an_unknown_key_is_401_and_never_floods_the_provider(client: Client, jwks: Jwks) -> None:
    assert (await client.get("/jobs", headers=bearer(jwks.token()))).status_code == 200
    fetched = jwks.fetches
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i in range(10):
        unknown = jwks.token(kid=f"made-up-{i}")
        assert (await client.get("/jobs", headers=bearer(unknown))).status_code == 401
    assert jwks.fetches <= fetched + 1  # one refresh at most, then PyJWKClient's cooldown
    forged = jwks.token(key=stranger)  # the right kid, another key
    assert (await client.get("/jobs", headers=bearer(forged))).status_code == 401


async def test_the_header_cannot_pick_hmac_with_the_public_key(client: Client, jwks: Jwks) -> None:
    pem = jwks.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600}
    # PyJWT refuses to sign HMAC with a PEM key, so build the forgery by hand.
    forged = _hs256(claims, pem, KID)
    assert (await client.get("/jobs", headers=bearer(forged))).status_code == 401


async def test_the_provider_unreachable_before_any_key_is_known_is_503(client: Client, jwks: Jwks) -> None:
    jwks.down = True
    answer = await client.get("/jobs", headers=bearer(jwks.token()))
    assert answer.status_code == 503
    assert answer.headers["retry-after"]
    jwks.down = False
    assert (await client.get("/jobs", headers=bearer(jwks.token()))).status_code == 200


@pytest.mark.parametrize("missing", ["jwt_issuer", "jwt_audience"])
def test_issuer_and_audience_are_required(settings: Settings, missing: str) -> None:
    values = {field: getattr(settings, field) for field in settings.__struct_fields__}
    values[missing] = None
    with pytest.raises(ValueError, match=missing.upper()):
        create_app(Settings(**values))


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret, header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + signature).decode()
