"""Blind indexes: deterministic, keyed, separated per field and per key version."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from datetime import date

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from app.blind_index import BlindIndex, IndexedField, kana_birth_term

index_keys = st.binary(min_size=32, max_size=64)
fields = st.sampled_from(list(IndexedField))
DIGEST = re.compile(r"v[0-9]+:[0-9a-f]{64}")


def independent_digest(index_key: bytes, version: int, field: str, value: str) -> str:
    # RFC 5869 HKDF-SHA256 written out (no salt: a zero-filled one; one output block).
    prk = hmac.new(b"\x00" * 32, index_key, hashlib.sha256).digest()
    info = f"shopvault/blind-index/v{version}/{field}".encode()
    subkey = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
    return f"v{version}:" + hmac.new(subkey, value.encode(), hashlib.sha256).hexdigest()


@given(key=index_keys, field=fields, value=st.text(), version=st.integers(1, 50))
def test_digest_matches_the_documented_construction(
    key: bytes, field: IndexedField, value: str, version: int
) -> None:
    index = BlindIndex(key, version=version)
    assert index.version == version
    assert index.digest(field, value) == independent_digest(key, version, field.value, value)


@given(key=index_keys, field=fields, value=st.text())
def test_digest_is_deterministic_and_shaped(key: bytes, field: IndexedField, value: str) -> None:
    first = BlindIndex(key).digest(field, value)
    assert first == BlindIndex(key).digest(field, value)
    assert first == BlindIndex(key).digest(field, value)  # a second call on one instance too
    assert DIGEST.fullmatch(first)
    assert first.startswith("v1:")


@given(key=index_keys, value=st.text())
def test_fields_are_separated(key: bytes, value: str) -> None:
    index = BlindIndex(key)
    digests = {index.digest(field, value) for field in IndexedField}
    assert len(digests) == len(IndexedField)


@given(key=index_keys, other=index_keys, field=fields, value=st.text())
def test_keys_are_separated(key: bytes, other: bytes, field: IndexedField, value: str) -> None:
    assume(key != other)
    assert BlindIndex(key).digest(field, value) != BlindIndex(other).digest(field, value)


@given(key=index_keys, field=fields, value=st.text())
def test_versions_are_separated(key: bytes, field: IndexedField, value: str) -> None:
    one, two = BlindIndex(key, version=1), BlindIndex(key, version=2)
    assert one.digest(field, value)[3:] != two.digest(field, value)[3:]
    assert two.digest(field, value).startswith("v2:")


@given(key=index_keys, field=fields, value=st.text(), other=st.text())
def test_different_values_differ(key: bytes, field: IndexedField, value: str, other: str) -> None:
    assume(value != other)
    index = BlindIndex(key)
    assert index.digest(field, value) != index.digest(field, other)


def test_digest_does_not_contain_the_value_or_key() -> None:
    key = os.urandom(32)
    digest = BlindIndex(key).digest(IndexedField.PHONE, "+819012345678")
    assert "819012345678" not in digest
    assert key.hex() not in repr(BlindIndex(key))


@pytest.mark.parametrize("size", [0, 16, 31])
def test_short_index_keys_are_refused(size: int) -> None:
    with pytest.raises(ValueError):
        BlindIndex(os.urandom(size))


@pytest.mark.parametrize("version", [0, -1])
def test_versions_start_at_one(version: int) -> None:
    with pytest.raises(ValueError):
        BlindIndex(os.urandom(32), version=version)


def test_kana_birth_term_pairs_unambiguously() -> None:
    term = kana_birth_term("ヤマダタロウ", date(1990, 4, 1))
    assert term == "ヤマダタロウ\n1990-04-01"
    assert term != kana_birth_term("ヤマダタロウ", date(1990, 4, 2))
