"""Steps 1 and 2 of the check order: the token, then the purpose, reason and visit headers.

Header problems answer ``400`` (never FastAPI's default ``422``), before the role or the
customer is looked at; a well-formed reason travels percent-encoded and is kept NFC.
"""

from __future__ import annotations

import unicodedata
import urllib.parse
import uuid
from collections.abc import Callable, Mapping

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests import cast
from tests.access_log import event_of, events_of
from tests.world import purpose

Headers = dict[str, str]
REASON = "お客様からの開示請求に対応するため"


def _get(
    client: TestClient, headers: Mapping[str, str | bytes], customer_id: str | None = None
) -> httpx.Response:
    response: httpx.Response = client.get(
        f"/customers/{customer_id or uuid.uuid4()}", headers=headers
    )
    return response


def test_no_token_is_401_before_any_header_check(client: TestClient) -> None:
    for headers in ({}, {"X-Access-Purpose": "contract"}, {"X-Access-Purpose": "nonsense"}):
        response = _get(client, headers)
        assert response.status_code == 401, headers
        assert response.headers["content-type"].startswith("application/problem+json")
    bad_token = {"Authorization": "Bearer not-a-jwt", "X-Access-Purpose": "nonsense"}
    assert _get(client, bad_token).status_code == 401


def test_missing_or_unknown_purpose_is_400(
    client: TestClient, as_member: Callable[..., Headers], db: Engine, subtests: pytest.Subtests
) -> None:
    for purpose_header, problem in (
        (None, "purpose-required"),
        ("", "purpose-required"),
        ("sightseeing", "purpose-unknown"),
        ("CONTRACT", "purpose-unknown"),
    ):
        with subtests.test(msg=repr(purpose_header)):
            headers = {**as_member(cast.MANAGER), "X-Access-Reason": urllib.parse.quote(REASON)}
            if purpose_header is not None:
                headers["X-Access-Purpose"] = purpose_header
            response = _get(client, headers)
            assert response.status_code == 400
            assert response.json()["type"] == f"/problems/{problem}"
            assert events_of(db, response) == []


def _encoded(text: str) -> bytes:
    return urllib.parse.quote(text).encode()


MALFORMED_REASONS = {
    "bare percent": b"100% sure this is needed",
    "bad escape": b"%zz%zz%zz%zz%zz",
    "raw UTF-8, not percent-encoded": "理由は問い合わせ対応です".encode(),
    "invalid UTF-8": b"%FF%FE%FF%FE%FF%FE%FF%FE%FF%FE",
    "invalid UTF-8 sequence": b"%C3%28abcdefghijk",
    "too short (6)": _encoded("短い理由です"),
    "too short (9)": _encoded("123456789"),
    "too long (501)": _encoded("あ" * 501),
    "blank padding": _encoded("          x         "),
    "control character": _encoded("理由\x00理由理由理由理由"),
}


def test_malformed_reason_is_400(
    client: TestClient, as_member: Callable[..., Headers], subtests: pytest.Subtests
) -> None:
    manager = as_member(cast.MANAGER)
    for label, reason in MALFORMED_REASONS.items():
        with subtests.test(msg=label):
            headers: dict[str, str | bytes] = {
                **manager,
                "X-Access-Purpose": "support",
                "X-Access-Reason": reason,
            }
            response = _get(client, headers)
            assert response.status_code == 400, response.text
            assert response.json()["type"] == "/problems/bad-header"


def test_reason_length_bounds_count_characters_not_bytes(
    client: TestClient, as_member: Callable[..., Headers]
) -> None:
    manager = as_member(cast.MANAGER)
    for length in (10, 500):
        headers = purpose(manager, "support", reason="理" * length)
        # 404: the headers were accepted, the policy allowed, and the (random) id does not exist.
        assert _get(client, headers).status_code == 404, length


def test_malformed_visit_id_is_400(client: TestClient, as_member: Callable[..., Headers]) -> None:
    sales = as_member(cast.SALES)
    for visit in ("not-a-uuid", "1234", "' OR 1=1 --", str(uuid.uuid4()) + "0", ""):
        headers = {**sales, "X-Access-Purpose": "contract", "X-Visit-Id": visit}
        response = _get(client, headers)
        assert response.status_code == 400, visit
        assert response.json()["type"] == "/problems/bad-header"


def test_header_problems_come_before_the_role_check(
    client: TestClient, as_member: Callable[..., Headers]
) -> None:
    # An admin may use no purpose at all (step 3 → 403), but a malformed header is step 2.
    headers = {**as_member(cast.ADMIN), "X-Access-Purpose": "contract", "X-Visit-Id": "nope"}
    assert _get(client, headers).status_code == 400
    headers = {**as_member(cast.ADMIN), "X-Access-Purpose": "nonsense"}
    assert _get(client, headers).status_code == 400
    headers = {**as_member(cast.ADMIN), "X-Access-Purpose": "contract"}
    assert _get(client, headers).status_code == 403


def test_japanese_reason_travels_percent_encoded_and_is_kept_nfc(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    # Decomposed (NFD) katakana: ガ as カ + combining voiced mark.
    decomposed = unicodedata.normalize("NFD", "ガイドラインに基づく開示請求の確認")
    assert decomposed != unicodedata.normalize("NFC", decomposed)
    headers = purpose(as_member(cast.MANAGER), "subject_request", reason=decomposed)
    response = _get(client, headers)
    assert response.status_code == 404
    # A 404 commits nothing; a denied attempt with the same reason shows it in the log.
    headers = purpose(as_member(cast.AUDITOR), "contract", reason=decomposed)
    response = _get(client, headers)
    assert response.status_code == 403
    event = event_of(db, response)
    assert event.reason == unicodedata.normalize("NFC", decomposed)
