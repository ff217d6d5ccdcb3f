"""Encryption at rest: data keys wrapped by the master key, fields sealed to their place."""

from __future__ import annotations

import hmac
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import assume, given
from hypothesis import strategies as st

from app.crypto import (
    DATA_KEY_BYTES,
    DecryptionError,
    FieldCipher,
    HmacSha256,
    KeyScope,
    MasterKey,
    _key_aad,
    new_data_key,
    xor,
)

keys = st.binary(min_size=32, max_size=32)
names = st.text(min_size=1, max_size=40)
places = st.tuples(names, names, names)
scopes = st.sampled_from(list(KeyScope))


def place(triple: tuple[str, str, str]) -> dict[str, str]:
    table, column, row_id = triple
    return {"table": table, "column": column, "row_id": row_id}


# --- field encryption ------------------------------------------------------------------------


@given(key=keys, plaintext=st.text(), where=places)
def test_field_round_trip(key: bytes, plaintext: str, where: tuple[str, str, str]) -> None:
    cipher = FieldCipher(key)
    blob = cipher.encrypt(plaintext, **place(where))
    assert cipher.decrypt(blob, **place(where)) == plaintext


@given(key=keys, plaintext=st.text(), where=places, elsewhere=places)
def test_field_does_not_decrypt_in_another_place(
    key: bytes, plaintext: str, where: tuple[str, str, str], elsewhere: tuple[str, str, str]
) -> None:
    assume(where != elsewhere)
    cipher = FieldCipher(key)
    blob = cipher.encrypt(plaintext, **place(where))
    with pytest.raises(DecryptionError):
        cipher.decrypt(blob, **place(elsewhere))


@pytest.mark.parametrize("changed", ["table", "column", "row_id"])
def test_each_part_of_the_place_is_bound(changed: str) -> None:
    cipher = FieldCipher(new_data_key())
    where = {"table": "customer", "column": "phone", "row_id": "c-1"}
    blob = cipher.encrypt("+819012345678", **where)
    with pytest.raises(DecryptionError):
        cipher.decrypt(blob, **{**where, changed: where[changed] + "x"})


def test_place_parts_do_not_run_together() -> None:
    # ("ab", "c") and ("a", "bc") concatenate alike; the associated data must still differ.
    cipher = FieldCipher(new_data_key())
    blob = cipher.encrypt("山田 太郎", table="ab", column="c", row_id="r")
    with pytest.raises(DecryptionError):
        cipher.decrypt(blob, table="a", column="bc", row_id="r")


@given(key=keys, other=keys, plaintext=st.text(), where=places)
def test_field_does_not_decrypt_under_another_key(
    key: bytes, other: bytes, plaintext: str, where: tuple[str, str, str]
) -> None:
    assume(key != other)
    blob = FieldCipher(key).encrypt(plaintext, **place(where))
    with pytest.raises(DecryptionError):
        FieldCipher(other).decrypt(blob, **place(where))


@given(plaintext=st.text(), data=st.data())
def test_any_flipped_bit_is_detected(plaintext: str, data: st.DataObject) -> None:
    cipher = FieldCipher(new_data_key())
    blob = bytearray(cipher.encrypt(plaintext, table="t", column="c", row_id="r"))
    index = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    blob[index] ^= 1 << bit
    with pytest.raises(DecryptionError):
        cipher.decrypt(bytes(blob), table="t", column="c", row_id="r")


@given(plaintext=st.text(), data=st.data())
def test_truncated_blobs_are_refused(plaintext: str, data: st.DataObject) -> None:
    cipher = FieldCipher(new_data_key())
    blob = cipher.encrypt(plaintext, table="t", column="c", row_id="r")
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(DecryptionError):
        cipher.decrypt(blob[:cut], table="t", column="c", row_id="r")


@given(plaintext=st.text())
def test_equal_plaintexts_give_different_ciphertexts(plaintext: str) -> None:
    cipher = FieldCipher(new_data_key())
    first = cipher.encrypt(plaintext, table="t", column="c", row_id="r")
    second = cipher.encrypt(plaintext, table="t", column="c", row_id="r")
    assert first != second
    assert first[1:13] != second[1:13]  # fresh nonce


def test_blob_layout_and_no_plaintext() -> None:
    plaintext = "東京都千代田区千代田1-1"
    blob = FieldCipher(new_data_key()).encrypt(plaintext, table="t", column="c", row_id="r")
    encoded = plaintext.encode()
    assert blob[0] == 1  # format version
    assert len(blob) == 1 + 12 + len(encoded) + 16
    assert encoded not in blob


def test_unknown_format_version_is_refused() -> None:
    cipher = FieldCipher(new_data_key())
    blob = cipher.encrypt("x", table="t", column="c", row_id="r")
    with pytest.raises(DecryptionError):
        cipher.decrypt(b"\x02" + blob[1:], table="t", column="c", row_id="r")


def independent_aad(label: bytes, *parts: str) -> bytes:
    # The documented layout, rebuilt here: version, label, then each part length-prefixed.
    encoded = [p.encode() for p in parts]
    return b"\x01" + label + b"".join(len(p).to_bytes(2, "big") + p for p in encoded)


def independent_field_aad(table: str, column: str, row_id: str) -> bytes:
    return independent_aad(b"field", table, column, row_id)


def test_blob_format_is_the_documented_one() -> None:
    key = new_data_key()
    nonce = os.urandom(12)
    aad = independent_field_aad("customer", "name", "c-1")
    blob = b"\x01" + nonce + AESGCM(key).encrypt(nonce, "山田 太郎".encode(), aad)
    assert FieldCipher(key).decrypt(blob, table="customer", column="name", row_id="c-1") == (
        "山田 太郎"
    )


def test_authentic_non_text_is_refused() -> None:
    # Sealed with the right key and place by something other than FieldCipher.
    key = new_data_key()
    nonce = os.urandom(12)
    aad = independent_field_aad("t", "c", "r")
    forged = b"\x01" + nonce + AESGCM(key).encrypt(nonce, b"\xff\xfe", aad)
    with pytest.raises(DecryptionError):
        FieldCipher(key).decrypt(forged, table="t", column="c", row_id="r")


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_field_cipher_needs_a_32_byte_key(size: int) -> None:
    with pytest.raises(ValueError):
        FieldCipher(os.urandom(size))


def test_keys_do_not_show_in_repr() -> None:
    key = new_data_key()
    assert key.hex() not in repr(FieldCipher(key))
    assert key.hex() not in repr(MasterKey(key))


# --- data keys and the master key -------------------------------------------------------------


def test_new_data_keys_are_random_and_sized() -> None:
    fresh = {new_data_key() for _ in range(100)}
    assert len(fresh) == 100
    assert all(len(key) == DATA_KEY_BYTES for key in fresh)


@given(master=keys, customer_id=names, scope=scopes)
def test_wrap_round_trip(master: bytes, customer_id: str, scope: KeyScope) -> None:
    data_key = new_data_key()
    wrapped = MasterKey(master).wrap(data_key, customer_id=customer_id, scope=scope)
    assert data_key not in wrapped
    assert len(wrapped) == 1 + 12 + 32 + 16
    unwrapped = MasterKey(master).unwrap(wrapped, customer_id=customer_id, scope=scope)
    assert unwrapped == data_key


@given(master=keys, customer_id=names, other_id=names, scope=scopes)
def test_wrapped_key_is_bound_to_its_customer(
    master: bytes, customer_id: str, other_id: str, scope: KeyScope
) -> None:
    assume(customer_id != other_id)
    wrapped = MasterKey(master).wrap(new_data_key(), customer_id=customer_id, scope=scope)
    with pytest.raises(DecryptionError):
        MasterKey(master).unwrap(wrapped, customer_id=other_id, scope=scope)


@given(master=keys, customer_id=names)
def test_wrapped_key_is_bound_to_its_scope(master: bytes, customer_id: str) -> None:
    key = MasterKey(master)
    wrapped = key.wrap(new_data_key(), customer_id=customer_id, scope=KeyScope.IDENTITY)
    with pytest.raises(DecryptionError):
        key.unwrap(wrapped, customer_id=customer_id, scope=KeyScope.PROFILE)


@given(master=keys, other=keys, scope=scopes)
def test_wrapped_key_needs_its_master_key(master: bytes, other: bytes, scope: KeyScope) -> None:
    assume(master != other)
    wrapped = MasterKey(master).wrap(new_data_key(), customer_id="c-1", scope=scope)
    with pytest.raises(DecryptionError):
        MasterKey(other).unwrap(wrapped, customer_id="c-1", scope=scope)


@given(data=st.data())
def test_tampered_wrapped_key_is_refused(data: st.DataObject) -> None:
    key = MasterKey(new_data_key())
    wrapped = bytearray(key.wrap(new_data_key(), customer_id="c-1", scope=KeyScope.PROFILE))
    index = data.draw(st.integers(0, len(wrapped) - 1))
    wrapped[index] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(DecryptionError):
        key.unwrap(bytes(wrapped), customer_id="c-1", scope=KeyScope.PROFILE)


def test_wrapped_key_is_not_a_field_blob() -> None:
    # Same key bytes used as master and as data key: the two kinds of blob stay apart.
    shared = new_data_key()
    wrapped = MasterKey(shared).wrap(new_data_key(), customer_id="c", scope=KeyScope.PROFILE)
    with pytest.raises(DecryptionError):
        FieldCipher(shared).decrypt(wrapped, table="c", column="profile", row_id="")


def test_rewrapping_under_a_new_master_keeps_the_data_key() -> None:
    old, new = MasterKey(new_data_key()), MasterKey(new_data_key())
    data_key = new_data_key()
    blob = FieldCipher(data_key).encrypt("090-1234-5678", table="t", column="c", row_id="r")
    wrapped = old.wrap(data_key, customer_id="c-1", scope=KeyScope.PROFILE)
    rewrapped = new.wrap(
        old.unwrap(wrapped, customer_id="c-1", scope=KeyScope.PROFILE),
        customer_id="c-1",
        scope=KeyScope.PROFILE,
    )
    opened = new.unwrap(rewrapped, customer_id="c-1", scope=KeyScope.PROFILE)
    assert FieldCipher(opened).decrypt(blob, table="t", column="c", row_id="r") == "090-1234-5678"


@pytest.mark.parametrize("size", [16, 31, 33, 64])
def test_master_key_must_be_32_bytes(size: int) -> None:
    with pytest.raises(ValueError):
        MasterKey(os.urandom(size))


def test_only_32_byte_data_keys_are_wrapped() -> None:
    with pytest.raises(ValueError):
        MasterKey(new_data_key()).wrap(os.urandom(16), customer_id="c", scope=KeyScope.PROFILE)


def test_errors_carry_no_plaintext_or_key() -> None:
    key = new_data_key()
    blob = FieldCipher(key).encrypt("山田 太郎", table="t", column="c", row_id="r")
    with pytest.raises(DecryptionError) as caught:
        FieldCipher(new_data_key()).decrypt(blob, table="t", column="c", row_id="r")
    assert "山田" not in str(caught.value)
    assert key.hex() not in str(caught.value)
    assert caught.value.__cause__ is None


@given(key=st.binary(max_size=200), message=st.binary(max_size=3000))
def test_hmac_sha256_with_its_key_blocks_hashed_once_is_hmac_sha256(
    key: bytes, message: bytes
) -> None:
    # Keys shorter than, as long as and longer than SHA-256's block (hashed first, per RFC 2104).
    mac = HmacSha256(key)
    assert mac.digest(message) == hmac.digest(key, message, "sha256")
    assert mac.digest(message) == mac.digest(message)  # the key's blocks are not consumed


@given(key=keys, data_key=keys, mask=keys, customer_id=names, scope=scopes)
def test_a_master_key_re_masks_a_data_key_it_wrapped_in_place(
    key: bytes, data_key: bytes, mask: bytes, customer_id: str, scope: KeyScope
) -> None:
    master = MasterKey(key)
    assert _key_aad(customer_id, scope) == independent_aad(b"key", customer_id, scope.value)
    wrapped = master.wrap(data_key, customer_id=customer_id, scope=scope)
    remasked = master.remask(wrapped, mask, customer_id=customer_id, scope=scope)
    assert remasked[1:13] != wrapped[1:13]  # a fresh nonce
    assert master.unwrap(remasked, customer_id=customer_id, scope=scope) == xor(data_key, mask)
    with pytest.raises(DecryptionError):  # still bound to its customer and scope
        master.remask(wrapped, mask, customer_id=customer_id + "x", scope=scope)
    with pytest.raises(DecryptionError):
        MasterKey(bytes(b ^ 1 for b in key)).remask(
            wrapped, mask, customer_id=customer_id, scope=scope
        )
