"""The grammars in the OpenAPI document (``app/validation/patterns.py``): what a client reads
there is what the service accepts. Every value written to a pattern (as a fuzzer or a client
would) passes the normaliser, except phone numbers, whose number plan a pattern only sketches;
the forms people write match; and the document carries the patterns."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.presence.proofs import normalise_any_kept_number
from app.validation.kana import normalise_kana
from app.validation.patterns import DOCUMENT_NUMBER, KANA, PHONE, PIN, POSTAL_CODE
from app.validation.phone import normalise_phone
from app.validation.postal import normalise_postal_code

GENERATED = settings(
    max_examples=300, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


def _written_to(pattern: str, max_length: int) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True).filter(lambda value: len(value) <= max_length)


@pytest.mark.parametrize(
    ("pattern", "normalise", "max_length"),
    [
        (KANA, normalise_kana, 100),
        (POSTAL_CODE, normalise_postal_code, 16),
        (DOCUMENT_NUMBER, normalise_any_kept_number, 32),
    ],
    ids=["kana", "postal_code", "document_number"],
)
def test_every_value_written_to_the_pattern_is_accepted(
    pattern: str, normalise: Callable[[str], str], max_length: int
) -> None:
    @GENERATED
    @given(_written_to(pattern, max_length))
    def accepted(value: str) -> None:
        normalise(value)

    accepted()


def test_most_phone_numbers_written_to_the_pattern_are_valid() -> None:
    outcomes: list[bool] = []

    @GENERATED
    @given(_written_to(PHONE, 32))
    def sample(value: str) -> None:
        try:
            normalise_phone(value)
        except ValueError:
            outcomes.append(False)
        else:
            outcomes.append(True)

    sample()
    assert sum(outcomes) / len(outcomes) > 0.5


@pytest.mark.parametrize(
    "form",
    [
        "090-1234-5678",
        "09012345678",
        "+81 90 1234 5678",
        "+81-90-1234-5678",
        "+81 (0)90-1234-5678",
        "(090) 1234-5678",
        "０９０－１２３４－５６７８",
        "＋８１ ９０ １２３４ ５６７８",
        "090.1234.5678",
        "03-1234-5678",
        "03(1234)5678",
        "0120-123-456",
        "050-1234-5678",
        "0800-123-4567",
    ],
)
def test_the_phone_forms_people_write_match(form: str) -> None:
    assert re.fullmatch(PHONE, form)
    normalise_phone(form)


@pytest.mark.parametrize(
    ("pattern", "form"),
    [
        (KANA, "ヤマダ タロウ"),
        (KANA, "ヤマダ　タロウ"),
        (KANA, "ﾔﾏﾀﾞ ﾀﾛｳ"),
        (KANA, "ヴァン・デル・ベルク"),
        (POSTAL_CODE, "150-0041"),
        (POSTAL_CODE, "1500041"),
        (POSTAL_CODE, "〒150-0041"),
        (POSTAL_CODE, "１５０－００４１"),
        (DOCUMENT_NUMBER, "123456789012"),
        (DOCUMENT_NUMBER, "1234 5678 9012"),
        (DOCUMENT_NUMBER, "TK1234567"),
        (DOCUMENT_NUMBER, "tk-1234567"),
        (DOCUMENT_NUMBER, "AB12345678CD"),
        (PIN, "4821"),
    ],
)
def test_the_forms_people_write_match(pattern: str, form: str) -> None:
    assert re.fullmatch(pattern, form)


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        (PHONE, "600000000"),  # no trunk prefix: ambiguous
        (PHONE, "+1 212 555 0100"),
        (PHONE, "090-1234-567a"),
        (KANA, "やまだ"),
        (KANA, "ｱﾞ"),  # a voicing mark that composes with nothing
        (POSTAL_CODE, "150-004"),
        (DOCUMENT_NUMBER, "12345678901"),
        (DOCUMENT_NUMBER, "ＡＢ1234567ı"),
        (PIN, "482"),
        (PIN, "４８２１"),
    ],
)
def test_what_no_one_writes_does_not_match(pattern: str, value: str) -> None:
    assert not re.fullmatch(pattern, value)


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def _string(property_schema: dict[str, Any]) -> dict[str, Any]:
    """The string branch of an optional property (``anyOf`` with null)."""
    for branch in property_schema.get("anyOf", [property_schema]):
        if branch.get("type") == "string":
            return branch
    raise AssertionError(property_schema)


def test_the_document_declares_the_patterns(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    create = _schema(document, "CustomerCreate")["properties"]
    assert _string(create["phone"])["pattern"] == PHONE
    assert _string(create["name_kana"])["pattern"] == KANA
    assert _string(create["postal_code"])["pattern"] == POSTAL_CODE
    assert _string(create["pin"])["pattern"] == PIN
    patch = _schema(document, "CustomerPatch")["properties"]
    assert _string(patch["phone"])["pattern"] == PHONE
    proof = _schema(document, "DocumentProof")["properties"]
    assert _string(proof["number"])["pattern"] == DOCUMENT_NUMBER


def test_a_value_off_the_pattern_is_refused_without_being_echoed(
    client: TestClient, as_member: Callable[..., dict[str, str]]
) -> None:
    from tests import cast
    from tests.world import purpose

    headers = purpose(as_member(cast.SALES), "contract")
    response = client.post("/customers/search", json={"phone": "600000000"}, headers=headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "phone"]
    assert "600000000" not in response.text
