"""Tokens from an identity provider: a real local JWKS server (RSA, EC and Ed25519 keys it made) and the live server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import requests
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from support import ROOT, LiveServer, free_port, wait_for
from tasknotify import jwks
from tasknotify.config import load_config

AUDIENCE = "tasks-api"
READ_WRITE = "tasks:write tasks:read updates:read"


# -- the identity provider ------------------------------------------------------------------


@dataclass
class Key:
    """A key pair the provider signs with, published in its JWKS under kid."""

    kid: str
    alg: str
    private: Any

    @classmethod
    def make(cls, kid: str, alg: str) -> Key:
        if alg == "RS256":
            private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            private = ed25519.Ed25519PrivateKey.generate()
        return cls(kid, alg, private)

    @property
    def jwk(self) -> dict[str, Any]:
        algorithm = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[self.alg]
        return {**algorithm.to_jwk(self.private.public_key(), as_dict=True), "kid": self.kid, "alg": self.alg,
                "use": "sig"}

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": kid or self.kid})


@dataclass
class Issuer:
    """One issuer of the provider: its keys, and what its JWKS endpoint answers."""

    name: str
    keys: list[Key] = field(default_factory=list)
    cache_control: str = "public, max-age=3600"
    down: bool = False  # answer 503 to everything


class Provider:
    """A local identity provider: an HTTP server in a thread serving /<issuer>/jwks.json and OIDC discovery.

    Every request is recorded (path and monotonic time), so a test can count the fetches.
    """

    def __init__(self) -> None:
        self.issuers: dict[str, Issuer] = {}
        self.requests: list[tuple[str, float]] = []
        self.discovery_issuer: dict[str, str] = {}  # issuer name -> the issuer its document names (when wrong)
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                provider.requests.append((self.path, time.monotonic()))
                name, _, rest = self.path.lstrip("/").partition("/")
                issuer = provider.issuers.get(name)
                if issuer is None:
                    return self._answer(404, {"error": "no such issuer"})
                if issuer.down:
                    return self._answer(503, {"error": "down"})
                if rest == "jwks.json":
                    return self._answer(200, {"keys": [key.jwk for key in issuer.keys]}, issuer.cache_control)
                if rest == ".well-known/openid-configuration":
                    return self._answer(200, {"issuer": provider.discovery_issuer.get(name, provider.iss(name)),
                                              "jwks_uri": provider.jwks_url(name)})
                return self._answer(404, {"error": "not found"})

            def _answer(self, status: int, body: Any, cache_control: str | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if cache_control:
                    self.send_header("Cache-Control", cache_control)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Provider:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, name: str, *keys: Key, cache_control: str = "public, max-age=3600") -> Issuer:
        issuer = self.issuers[name] = Issuer(name, list(keys), cache_control)
        return issuer

    def iss(self, name: str) -> str:
        return f"{self.base}/{name}"

    def jwks_url(self, name: str) -> str:
        return f"{self.base}/{name}/jwks.json"

    def fetches(self, name: str) -> list[float]:
        """When the JWKS of issuer name was asked for."""
        return [at for path, at in list(self.requests) if path == f"/{name}/jwks.json"]

    def claims(self, name: str = "a", email: str = "alice@example.com", scope: Any = READ_WRITE,
               expires_in: float = 600, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.iss(name), "aud": AUDIENCE, "sub": "f3b0c1d2", "email": email, "scope": scope,
                "iat": now, "exp": now + expires_in, **extra}


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    """Key pairs made once for the module (RSA takes a moment): a's, b's, and spares."""
    return {"rsa": Key.make("a-rsa", "RS256"), "ec": Key.make("a-ec", "ES256"), "ed": Key.make("a-ed", "EdDSA"),
            "next": Key.make("a-next", "RS256"), "b": Key.make("b-rsa", "RS256"),
            "b-shared": Key.make("shared", "RS256"), "a-shared": Key.make("shared", "RS256")}


@pytest.fixture
def idp(keys: dict[str, Key]) -> Iterator[Provider]:
    provider = Provider().start()
    provider.add("a", keys["rsa"], keys["ec"], keys["ed"], keys["a-shared"])
    provider.add("b", keys["b"], keys["b-shared"])
    yield provider
    provider.stop()


@pytest.fixture
def with_idp(start_server: Callable[..., LiveServer], idp: Provider) -> Callable[..., LiveServer]:
    """Start the live server with issuer a of idp as its identity provider (settings may be overridden)."""

    def start(**env: Any) -> LiveServer:
        settings = {"JWT_JWKS_URL": idp.jwks_url("a"), "JWT_ISSUER": idp.iss("a"), "JWT_AUDIENCE": AUDIENCE, **env}
        return start_server(**{k: v for k, v in settings.items() if v is not None})

    return start


def post(server: LiveServer, token: str | None, task_id: str, user: str = "alice@example.com") -> requests.Response:
    return server.post("/update_task", {"task_id": task_id, "user_email": user}, token=token)


def assert_refused(response: requests.Response, status: int = 401, code: str = "unauthorized") -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error["message"]


def socketio_refusal(server: LiveServer, token: str) -> dict[str, Any]:
    client = socketio.Client(reconnection=False)
    reasons: list[Any] = []
    client.on("connect_error", reasons.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(server.url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    wait_for(lambda: reasons, 5, "the connect_error")
    return reasons[0]


# -- accepted everywhere ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed"])
def test_provider_tokens_are_accepted_on_rest_sse_and_socketio(with_idp, idp, keys, kind):
    server = with_idp()
    token = keys[kind].sign(idp.claims(email="Alice@Example.COM"))  # the email's canonical form is the user
    sse_header = server.sse(token=token)
    sse_query = server.sse(f"/task_updates?access_token={token}", token=None)
    sio = server.socketio(token=token)
    assert sse_header.status == sse_query.status == 200
    answer = post(server, token, f"{kind}-1")
    assert answer.status_code == 200, answer.text
    assert answer.json()["task"]["user_email"] == "alice@example.com"
    refused = post(server, token, f"{kind}-2", user="bob@example.com")
    assert_refused(refused, 403, "forbidden")  # a user token writes only its own tasks
    assert post(server, server.token, f"{kind}-bob", user="bob@example.com").status_code == 200  # HS256 beside
    mine = post(server, token, f"{kind}-3").json()["event_id"]
    for stream in (sse_header, sse_query, sio):
        stream.wait_for_events(2)
        assert stream.ids == [answer.json()["event_id"], mine]  # not bob's
    listed = server.get("/tasks", token=token).json()["tasks"]
    assert {task["task_id"] for task in listed} == {f"{kind}-1", f"{kind}-3"}
    for stream in (sse_header, sse_query, sio):
        stream.close()


def test_scopes_from_a_list_claim_and_an_admin_provider_token(with_idp, idp, keys):
    server = with_idp(JWT_SCOPE_CLAIM="roles")
    reader = keys["rsa"].sign(idp.claims(roles=["tasks:read"], scope=None))
    admin = keys["ec"].sign(idp.claims(email="ops@example.com", roles=["admin"]))
    assert server.get("/tasks", token=reader).status_code == 200
    assert_refused(post(server, reader, "r1"), 403, "forbidden")
    assert post(server, admin, "r2", user="someone@example.com").status_code == 200
    assert server.get("/tasks/r2", token=admin).status_code == 200


def test_a_provider_token_ends_its_streams_when_it_expires_leeway_included(with_idp, idp, keys):
    server = with_idp(JWT_LEEWAY_SECONDS="1")
    token = keys["rsa"].sign(idp.claims(expires_in=2))
    sio, sse = server.socketio(token=token), server.sse(token=token)
    started = time.monotonic()
    wait_for(lambda: not sio.client.connected, 15, "the Socket.IO connection to close")
    wait_for(lambda: sse.closed.is_set(), 15, "the SSE stream to end")
    assert time.monotonic() - started > 1.5  # not before exp (2 s, plus 1 s of leeway, from a whole second)
    assert_refused(server.get("/tasks", token=token))


# -- refused ----------------------------------------------------------------------------------


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """An HS256 token made by hand: PyJWT refuses to use a PEM public key as an HMAC secret."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def test_bad_provider_tokens_are_refused_with_401_on_every_path(with_idp, idp, keys):
    server = with_idp()
    rsa_key = keys["rsa"]
    cases = {
        "wrong aud": rsa_key.sign(idp.claims(aud="another-api")),
        "wrong iss": rsa_key.sign(idp.claims(iss=idp.iss("elsewhere"))),
        "expired": rsa_key.sign(idp.claims(expires_in=-60)),  # beyond the 30 s leeway
        "alg none": jwt.encode(idp.claims(), None, algorithm="none", headers={"kid": "a-rsa"}),
        "key confusion": _hs256(idp.claims(), rsa_key.public_pem, "a-rsa"),
        "key confusion, JWK": _hs256(idp.claims(), json.dumps(rsa_key.jwk).encode(), "a-rsa"),
        "unknown kid": rsa_key.sign(idp.claims(), kid="nobody-knows"),
        "kid of another issuer": keys["b"].sign(idp.claims()),
        "kid of another issuer, same name": keys["b-shared"].sign(idp.claims()),
        "another issuer's own token": keys["b"].sign(idp.claims("b")),
        "no kid": jwt.encode(idp.claims(), rsa_key.private, algorithm="RS256"),
        "tampered": rsa_key.sign(idp.claims())[:-6] + "AAAAAA",
        "unverified email": rsa_key.sign(idp.claims(email_verified=False)),
        "no email": rsa_key.sign({k: v for k, v in idp.claims().items() if k != "email"}),
        "email not an address": rsa_key.sign(idp.claims(email="alice")),
        "scope of a bad type": rsa_key.sign(idp.claims(scope={"admin": True})),
        "no exp": rsa_key.sign({k: v for k, v in idp.claims().items() if k != "exp"}),
    }
    for case, token in cases.items():
        assert_refused(post(server, token, "x"))
        assert_refused(server.get("/tasks", token=token))
        assert_refused(server.get("/task_updates", token=token, stream=True))
        assert_refused(server.get(f"/task_updates?access_token={token}", token=None, stream=True))
        refusal = socketio_refusal(server, token)
        assert refusal["data"] == {"code": "unauthorized"}, (case, refusal)
    assert server.get("/tasks", token=None).status_code == 401
    assert server.get("/tasks").status_code == 200  # the service's own token, beside them all
    assert server.get("/readyz").status_code == 200


def test_a_key_is_known_only_for_the_issuer_that_published_it():
    """Two providers sharing one cache (JWKS URL, kid): the same kid at each is two keys."""
    a_key, b_key = Key.make("shared", "ES256"), Key.make("shared", "ES256")
    documents = {"https://a.example/jwks": {"keys": [a_key.jwk]}, "https://b.example/jwks": {"keys": [b_key.jwk]}}

    def fetch(url: str, timeout: float) -> requests.Response:
        response = requests.Response()
        response.status_code, response._content = 200, json.dumps(documents[url]).encode()
        return response

    cache = jwks.KeyCache()
    a, b = ({"issuer": f"https://{n}.example", "audience": AUDIENCE, "jwks_url": f"https://{n}.example/jwks",
             "oidc_issuer": None, "algorithms": ("ES256",), "user_claim": "email", "scope_claim": "scope",
             "leeway": 0.0, "min_refresh": 60.0, "timeout": 1.0} for n in "ab")
    provider_a = jwks.Provider(jwks.Settings(**a), cache, fetch)
    provider_b = jwks.Provider(jwks.Settings(**b), cache, fetch)
    assert provider_a.refresh() and provider_b.refresh()
    claims = {"aud": AUDIENCE, "email": "eve@example.com", "scope": "admin", "exp": time.time() + 60}
    from_b_as_a = b_key.sign({**claims, "iss": "https://a.example"})
    with pytest.raises(jwks.Refused, match="Signature verification failed"):
        provider_a.verify(from_b_as_a)
    assert provider_b.verify(b_key.sign({**claims, "iss": "https://b.example"})).email == "eve@example.com"
    assert cache.get("https://a.example/jwks", "shared") is not cache.get("https://b.example/jwks", "shared")


# -- keys: rotation, refresh, outage, refetch limits ------------------------------------------------


def _since_last_fetch(idp: Provider, name: str = "a") -> float:
    fetched = idp.fetches(name)
    return time.monotonic() - fetched[-1] if fetched else float("inf")


def test_a_new_kid_is_picked_up_after_one_refetch(with_idp, idp, keys):
    server = with_idp(JWKS_MIN_REFRESH_SECONDS="1")
    assert post(server, keys["rsa"].sign(idp.claims()), "k1").status_code == 200
    idp.issuers["a"].keys.append(keys["next"])  # the provider rotates in a new key
    wait_for(lambda: _since_last_fetch(idp) > 1.2, 10, "the minimum refresh interval to pass")
    before = len(idp.fetches("a"))
    token = keys["next"].sign(idp.claims())
    assert post(server, token, "k2").status_code == 200
    assert len(idp.fetches("a")) == before + 1
    assert post(server, token, "k3").status_code == 200
    assert len(idp.fetches("a")) == before + 1  # known now: no more fetches


@pytest.mark.serial
def test_keys_are_refreshed_before_their_max_age_and_a_retired_kid_stops_working(with_idp, idp, keys):
    idp.issuers["a"].cache_control = "max-age=6"
    server = with_idp()
    old = keys["rsa"].sign(idp.claims())
    assert post(server, old, "r1").status_code == 200
    idp.issuers["a"].keys = [key for key in idp.issuers["a"].keys if key.kid != "a-rsa"]  # retired
    retired_at = time.monotonic()
    wait_for(lambda: idp.fetches("a")[-1] > retired_at, 15, "the background refresh")
    fetched = idp.fetches("a")
    assert fetched[-1] - fetched[-2] < 6, "refreshed before the max-age ran out"
    message = assert_refused(post(server, old, "r2"))
    assert "unknown key id 'a-rsa'" in message
    assert post(server, keys["ec"].sign(idp.claims()), "r3").status_code == 200


def test_cached_keys_keep_working_while_the_provider_is_down(with_idp, idp, keys):
    idp.issuers["a"].cache_control = "max-age=2"
    server = with_idp(JWKS_MIN_REFRESH_SECONDS="1")
    token = keys["ec"].sign(idp.claims())
    assert post(server, token, "d1").status_code == 200
    idp.issuers["a"].down = True
    down_at = time.monotonic()
    wait_for(lambda: len([at for at in idp.fetches("a") if at > down_at]) >= 2, 15, "refreshes that fail")
    assert "could not fetch its keys" in server.log()
    sse, sio = server.sse(token=token), server.socketio(token=token)
    event_id = post(server, token, "d2").json()["event_id"]
    assert sse.wait_for_events(1)[0]["id"] == sio.wait_for_events(1)[0]["id"] == event_id
    assert server.get("/readyz").status_code == 200
    # An unknown kid is still the token's fault while keys are cached: 401, not 503.
    assert_refused(post(server, keys["rsa"].sign(idp.claims(), kid="rotated-in-meanwhile"), "d3"))
    sse.close()
    sio.close()


def test_with_no_keys_at_all_the_answer_is_503_and_readyz_names_the_provider(with_idp, idp, keys):
    idp.issuers["a"].down = True
    server = with_idp(JWKS_MIN_REFRESH_SECONDS="2")
    token = keys["rsa"].sign(idp.claims())
    for response in (post(server, token, "n1"), server.get("/tasks", token=token),
                     server.get("/task_updates", token=token, stream=True)):
        message = assert_refused(response, 503, "unavailable")
        assert idp.jwks_url("a") in message
        assert 1 <= int(response.headers["Retry-After"]) <= 2
    assert socketio_refusal(server, token)["data"] == {"code": "unavailable"}
    ready = server.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["identity_provider"].startswith(f"unavailable: no keys from {idp.jwks_url('a')}")
    assert post(server, server.token, "n2").status_code == 200  # the service's own tokens need no provider
    assert_refused(post(server, keys["rsa"].sign(idp.claims(aud="x")), "n3"), 503, "unavailable")
    idp.issuers["a"].down = False  # the provider comes back: the background retry finds its keys
    wait_for(lambda: server.get("/readyz").status_code == 200, 15, "the keys to be fetched")
    assert post(server, token, "n4").status_code == 200


def test_a_thousand_random_kids_cause_at_most_one_refetch_per_interval(with_idp, idp, keys):
    server = with_idp()  # JWKS_MIN_REFRESH_SECONDS: 60 by default
    assert post(server, keys["rsa"].sign(idp.claims()), "warm").status_code == 200
    before = len(idp.fetches("a"))
    claims = idp.claims()
    tokens = [keys["rsa"].sign(claims, kid=f"random-{random.getrandbits(64):x}") for _ in range(1000)]
    session = threading.local()

    def get(token: str) -> int:
        if not hasattr(session, "http"):
            session.http = requests.Session()
        return session.http.get(server.url + "/tasks", headers={"Authorization": f"Bearer {token}"},
                                timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(get, tokens))
    assert statuses == [401] * 1000
    assert len(idp.fetches("a")) - before <= 1
    assert post(server, keys["ec"].sign(idp.claims()), "after").status_code == 200


# -- discovery and configuration ---------------------------------------------------------------


def test_discovery_through_oidc_issuer(with_idp, idp, keys):
    server = with_idp(JWT_JWKS_URL=None, JWT_ISSUER=None, OIDC_ISSUER=idp.iss("a"))
    token = keys["ec"].sign(idp.claims())
    assert post(server, token, "o1").status_code == 200
    paths = [path for path, _ in idp.requests]
    assert paths[:2] == ["/a/.well-known/openid-configuration", "/a/jwks.json"]
    assert_refused(post(server, keys["b"].sign(idp.claims("b")), "o2"))


def test_a_discovery_document_naming_another_issuer_is_not_trusted(with_idp, idp, keys):
    idp.discovery_issuer["a"] = idp.iss("b")
    server = with_idp(JWT_JWKS_URL=None, JWT_ISSUER=None, OIDC_ISSUER=idp.iss("a"))

    def settled() -> str | None:
        # The first fetch runs in the background from the start; until it is back, readyz says "not fetched yet".
        check = server.get("/readyz").json()["checks"]["identity_provider"]
        return None if "not fetched yet" in check else check

    assert "not OIDC_ISSUER" in wait_for(settled, 10, "the first discovery to come back")
    assert server.get("/readyz").status_code == 503
    assert_refused(post(server, keys["ec"].sign(idp.claims()), "x"), 503, "unavailable")
    assert idp.fetches("a") == []


@pytest.mark.parametrize(("env", "message"), [
    ({"JWT_JWKS_URL": "https://idp.example/jwks", "JWT_ISSUER": "https://idp.example"}, "JWT_AUDIENCE is required"),
    ({"JWT_JWKS_URL": "https://idp.example/jwks", "JWT_AUDIENCE": AUDIENCE}, "needs JWT_ISSUER"),
    ({"OIDC_ISSUER": "https://idp.example", "JWT_ISSUER": "https://other.example", "JWT_AUDIENCE": AUDIENCE},
     "differs from OIDC_ISSUER"),
    ({"OIDC_ISSUER": "https://idp.example", "JWT_JWKS_URL": "https://idp.example/jwks", "JWT_AUDIENCE": AUDIENCE},
     "not both"),
    ({"JWT_AUDIENCE": AUDIENCE}, "need JWT_JWKS_URL or OIDC_ISSUER"),
    ({"JWT_JWKS_URL": "idp.example/jwks"}, "invalid value for JWT_JWKS_URL"),
    ({"JWT_ALGORITHMS": "RS256,HS256"}, "never none or HS*"),
    ({"JWT_ALGORITHMS": "none"}, "never none or HS*"),
    ({"JWT_LEEWAY_SECONDS": "-1"}, "invalid value for JWT_LEEWAY_SECONDS"),
    ({"JWKS_MIN_REFRESH_SECONDS": "0"}, "invalid value for JWKS_MIN_REFRESH_SECONDS"),
])
def test_identity_provider_settings_that_do_not_fit_are_refused(env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(env)


def test_a_bad_identity_provider_configuration_stops_the_start_with_one_line(tmp_path):
    refused = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "INSTANCE_PATH": str(tmp_path / "instance"),
                                  "PORT": str(free_port()), "PYTHONWARNINGS": "ignore",
                                  "JWT_JWKS_URL": "https://idp.example/jwks", "JWT_ISSUER": "https://idp.example"})
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        "configuration: JWT_AUDIENCE is required with an identity provider: the aud its tokens must name"]
    assert load_config({"JWT_JWKS_URL": "https://idp.example/jwks", "JWT_ISSUER": "https://idp.example",
                        "JWT_AUDIENCE": AUDIENCE})["JWT_ALGORITHMS"] == ("RS256", "ES256", "EdDSA")


def test_token_create_keeps_working_beside_a_provider(tmp_path, idp):
    env = {"PATH": "/usr/bin:/bin", "INSTANCE_PATH": str(tmp_path / "instance"), "SECRET_KEY": "k" * 40,
           "JWT_JWKS_URL": idp.jwks_url("a"), "JWT_ISSUER": idp.iss("a"), "JWT_AUDIENCE": AUDIENCE}
    made = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "token", "create", "--user",
                           "backend@example.com", "--scope", "admin"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    claims = jwt.decode(made.stdout.strip(), "k" * 40, algorithms=["HS256"])
    assert claims["sub"] == "backend@example.com" and "iss" not in claims


# -- pieces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "seconds"), [
    ("public, max-age=300, must-revalidate", 300.0), ("max-age=60", 60.0), ('max-age="90"', 90.0),
    ("no-cache", jwks.DEFAULT_MAX_AGE), ("max-age=0", jwks.DEFAULT_MAX_AGE), ("s-maxage=5", jwks.DEFAULT_MAX_AGE),
    (None, jwks.DEFAULT_MAX_AGE),
])
def test_the_cache_age_comes_from_cache_control(header, seconds):
    assert jwks.max_age(header) == seconds


def test_only_public_signing_keys_with_a_kid_and_an_allowed_algorithm_are_kept(keys):
    rsa_jwk, ec_jwk = keys["rsa"].jwk, keys["ec"].jwk
    document = {"keys": [
        rsa_jwk, ec_jwk,
        {**rsa_jwk, "kid": "for-encryption", "use": "enc"},
        {k: v for k, v in rsa_jwk.items() if k != "kid"},
        {"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0"},
        {**keys["ed"].jwk, "kid": "ed"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        "not a key",
    ]}
    assert sorted(jwks.usable_keys(document, ("RS256", "ES256"))) == ["a-ec", "a-rsa"]
    with pytest.raises(ValueError, match="no signing key"):
        jwks.usable_keys({"keys": [rsa_jwk]}, ("ES256",))
    with pytest.raises(ValueError, match="no 'keys' list"):
        jwks.usable_keys(["not", "a", "jwks"], ("RS256",))
