"""Bearer tokens are checked strictly: anything but an unaltered, current HS256 token of ours is a
``401`` problem.

Each bad token is built from a real one (issued by ``/auth/token``) by changing one thing, and a
control re-encoding of the unchanged claims proves the crafting itself yields a working token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jose import jwt

from app.auth import tokens
from app.config import Settings
from app.keys import decode_key
from tests import cast

Headers = Callable[..., dict[str, str]]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _json_b64(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _hs_sign(key: bytes, signing_input: str, digest: Any = hashlib.sha256) -> str:
    return _b64(hmac.new(key, signing_input.encode(), digest).digest())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def jwt_key(settings: Settings) -> bytes:
    assert settings.jwt_key is not None
    return decode_key(settings.jwt_key.get_secret_value(), "jwt")


@pytest.fixture
def issued(as_member: Headers) -> str:
    """A real token of a store's sales member, as /auth/token issued it."""
    return as_member(cast.SALES)["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def claims(issued: str) -> dict[str, Any]:
    return dict(jwt.get_unverified_claims(issued))


def assert_refused(client: TestClient, token: str) -> None:
    response = client.get("/auth/me", headers=_bearer(token))
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["type"] == "/problems/unauthorized"
    assert body["status"] == 401
    assert "login" not in body and "sales1" not in response.text


def test_issued_token_works(client: TestClient, issued: str) -> None:
    response = client.get("/auth/me", headers=_bearer(issued))
    assert response.status_code == 200
    assert response.json()["login"] == "sales1"


def test_crafted_control_token_works(
    client: TestClient, claims: dict[str, Any], jwt_key: bytes
) -> None:
    # The same claims, freshly signed with the service key: proves the crafting below is sound,
    # so each refusal is due to the one thing changed.
    token = jwt.encode({**claims, "jti": secrets.token_hex(8)}, jwt_key, algorithm="HS256")
    assert client.get("/auth/me", headers=_bearer(token)).status_code == 200


def test_no_token(client: TestClient) -> None:
    response = client.get("/auth/me")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/problems/unauthorized"


@pytest.mark.parametrize(
    "garbage", ["garbage", "a.b.c", "...", "Bearer", _json_b64({"alg": "HS256"}) + ".e30."]
)
def test_garbage_token(client: TestClient, garbage: str) -> None:
    assert_refused(client, garbage)


def test_alg_none(client: TestClient, claims: dict[str, Any]) -> None:
    for alg in ("none", "None", "NONE"):
        token = f"{_json_b64({'alg': alg, 'typ': 'JWT'})}.{_json_b64(claims)}."
        assert_refused(client, token)


def test_hs512_with_the_same_key(
    client: TestClient, claims: dict[str, Any], jwt_key: bytes
) -> None:
    assert_refused(client, jwt.encode(claims, jwt_key, algorithm="HS512"))
    assert_refused(client, jwt.encode(claims, jwt_key, algorithm="HS384"))


def test_rs256_label_signed_with_the_key_as_hmac_secret(
    client: TestClient, claims: dict[str, Any], jwt_key: bytes
) -> None:
    signing_input = f"{_json_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_json_b64(claims)}"
    assert_refused(client, f"{signing_input}.{_hs_sign(jwt_key, signing_input)}")


def test_expired(client: TestClient, claims: dict[str, Any], jwt_key: bytes) -> None:
    now = int(time.time())
    expired = {**claims, "iat": now - 1000, "exp": now - 1}
    assert_refused(client, jwt.encode(expired, jwt_key, algorithm="HS256"))


def test_expiry_is_checked_on_each_use(
    client: TestClient, issued: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process keeps the claims of tokens it verified (app/auth/tokens.py); a token it
    # accepted a moment ago is refused the second it expires.
    assert client.get("/auth/me", headers=_bearer(issued)).status_code == 200
    expires_at = jwt.get_unverified_claims(issued)["exp"]
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: expires_at + 1.0))
    assert_refused(client, issued)


def test_logout_refuses_a_verified_token_at_once(client: TestClient, issued: str) -> None:
    assert client.get("/auth/me", headers=_bearer(issued)).status_code == 200
    assert client.post("/auth/logout", headers=_bearer(issued)).status_code in {200, 204}
    assert_refused(client, issued)


def test_wrong_audience(client: TestClient, claims: dict[str, Any], jwt_key: bytes) -> None:
    for audience in ("another-api", ["another-api"], "", ["shopvault-api-x"]):
        token = jwt.encode({**claims, "aud": audience}, jwt_key, algorithm="HS256")
        assert_refused(client, token)


def test_wrong_issuer(client: TestClient, claims: dict[str, Any], jwt_key: bytes) -> None:
    for issuer in ("someone-else", "", "shopvault "):
        token = jwt.encode({**claims, "iss": issuer}, jwt_key, algorithm="HS256")
        assert_refused(client, token)


@pytest.mark.parametrize("missing", ["aud", "iss", "exp", "iat", "sub", "jti", "role"])
def test_missing_claim(
    client: TestClient, claims: dict[str, Any], jwt_key: bytes, missing: str
) -> None:
    stripped = {name: value for name, value in claims.items() if name != missing}
    assert_refused(client, jwt.encode(stripped, jwt_key, algorithm="HS256"))


@pytest.mark.parametrize("claim", ["iat", "exp"])
def test_non_integer_time_claim(
    client: TestClient, claims: dict[str, Any], jwt_key: bytes, claim: str
) -> None:
    token = jwt.encode({**claims, claim: str(claims[claim])}, jwt_key, algorithm="HS256")
    assert_refused(client, token)


def test_issued_in_the_future(client: TestClient, claims: dict[str, Any], jwt_key: bytes) -> None:
    now = int(time.time())
    future = {**claims, "iat": now + 120, "exp": now + 900}
    assert_refused(client, jwt.encode(future, jwt_key, algorithm="HS256"))


def test_small_clock_skew_is_tolerated(
    client: TestClient, claims: dict[str, Any], jwt_key: bytes
) -> None:
    now = int(time.time())
    slightly_ahead = {**claims, "iat": now + 5, "exp": now + 900}
    token = jwt.encode(slightly_ahead, jwt_key, algorithm="HS256")
    assert client.get("/auth/me", headers=_bearer(token)).status_code == 200


def test_tampered_payload_keeps_signature(
    client: TestClient, issued: str, claims: dict[str, Any]
) -> None:
    header, _payload, signature = issued.split(".")
    for change in ({"role": "admin"}, {"role": "manager"}, {"ae": 1}, {"exp": claims["exp"] + 1}):
        assert_refused(client, f"{header}.{_json_b64({**claims, **change})}.{signature}")


def test_tampered_signature(client: TestClient, issued: str) -> None:
    header, payload, signature = issued.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert_refused(client, f"{header}.{payload}.{flipped}")
    assert_refused(client, f"{header}.{payload}.")


def test_signed_with_another_key(client: TestClient, claims: dict[str, Any]) -> None:
    assert_refused(client, jwt.encode(claims, secrets.token_bytes(32), algorithm="HS256"))


def test_role_claim_unknown(client: TestClient, claims: dict[str, Any], jwt_key: bytes) -> None:
    token = jwt.encode({**claims, "role": "root"}, jwt_key, algorithm="HS256")
    assert_refused(client, token)


def test_oversized_token(client: TestClient, claims: dict[str, Any], jwt_key: bytes) -> None:
    def padded(size: int) -> str:
        token = jwt.encode({**claims, "pad": ""}, jwt_key, algorithm="HS256")
        # Base64 grows by 4/3: pad the claim until the token is just at ``size`` characters.
        pad = "x" * ((size - len(token)) * 3 // 4)
        while True:
            token = jwt.encode({**claims, "pad": pad}, jwt_key, algorithm="HS256")
            if len(token) >= size:
                return token
            pad += "x"

    at_limit = padded(4090)
    assert len(at_limit) <= 4096
    assert client.get("/auth/me", headers=_bearer(at_limit)).status_code == 200
    over = padded(4100)
    assert len(over) > 4096
    assert_refused(client, over)


def test_extra_dots(client: TestClient, issued: str) -> None:
    header, payload, signature = issued.split(".")
    for token in (
        f"{issued}.",
        f"{header}.{payload}.{signature}.{signature}",
        f"{header}..{payload}.{signature}",
        f".{issued}",
    ):
        assert_refused(client, token)


def test_token_of_a_client_claiming_staff_kind(client: TestClient, jwt_key: bytes) -> None:
    response = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": cast.BILLING.name,
            "client_secret": cast.BILLING.secret,
        },
    )
    billing = dict(jwt.get_unverified_claims(response.json()["access_token"]))
    token = jwt.encode({**billing, "kind": "staff"}, jwt_key, algorithm="HS256")
    assert_refused(client, token)
