"""The vault and its master key ring: any key opens, the newest wraps, a new ring is picked up
by a running process without a restart, and a key taken out of the ring stops opening."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from app import vault as vault_module
from app.crypto import DecryptionError, KeyScope
from app.keyring import FixedRing, MasterKeyRing, RingFile, master_key_id
from app.shred_keys import FIRST_VERSION, ShredKeys
from app.vault import Vault


def _ring_file(data_dir: Path) -> RingFile:
    ring_file = RingFile(data_dir)
    ring_file.prepare()
    return ring_file


def _shred(data_dir: Path) -> ShredKeys:
    return ShredKeys(data_dir / "shred.keys").prepare()


def _add_key(ring_file: RingFile) -> bytes:
    key = secrets.token_bytes(32)
    with ring_file.editing() as editor:
        editor.write(editor.read().with_newest(key))
    return key


def _wrapped(vault: Vault, customer_id: str) -> tuple[str, bytes, bytes]:
    """A new customer's key rows: (master key id, wrapped identity key, wrapped profile key)."""
    _ciphers, rows = vault.new_customer_keys(customer_id, FIRST_VERSION)
    by_scope = {row.scope: row for row in rows}
    assert by_scope["identity"].master_key_id == by_scope["profile"].master_key_id
    identity, profile = by_scope["identity"], by_scope["profile"]
    return identity.master_key_id, identity.wrapped_key, profile.wrapped_key


def _reads(vault: Vault, customer_id: str, wrapped: tuple[str, bytes, bytes]) -> bool:
    try:
        vault.open_customer(customer_id, identity=wrapped[1], profile=wrapped[2])
    except DecryptionError:
        return False
    return True


def test_a_running_vault_wraps_with_a_key_added_to_the_ring_file(tmp_path: Path) -> None:
    ring_file = _ring_file(tmp_path)
    vault = Vault(ring_file, _shred(tmp_path))
    before = _wrapped(vault, "c-1")
    first_id = before[0]

    newer = _add_key(ring_file)
    after = _wrapped(vault, "c-2")
    assert after[0] == master_key_id(newer) != first_id
    assert vault.master_key_id == master_key_id(newer)
    # Both keys open: data keys not re-wrapped yet are still readable.
    assert _reads(vault, "c-1", before)
    assert _reads(vault, "c-2", after)


def test_a_data_key_wrapped_by_a_key_the_process_has_not_seen_makes_it_read_the_ring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process added a key and wrapped with it; this one only reads, and has not looked
    at the ring since: the data key that opens with none of its keys makes it look."""
    monkeypatch.setattr(vault_module, "RING_CHECK_SECONDS", 3600.0)
    ring_file = _ring_file(tmp_path)
    reader, writer = Vault(ring_file, _shred(tmp_path)), Vault(ring_file, _shred(tmp_path))
    newer = _add_key(ring_file)
    wrapped = _wrapped(writer, "c-1")
    assert wrapped[0] == master_key_id(newer)
    assert master_key_id(newer) not in reader.key_ids

    assert _reads(reader, "c-1", wrapped)
    assert master_key_id(newer) in reader.key_ids

    # A service key names its master key: an unknown name alone makes the reader look.
    other_reader = Vault(ring_file, _shred(tmp_path))
    newest = _add_key(ring_file)
    cipher, row = writer.new_service_key("notes")
    assert row.master_key_id == master_key_id(newest)
    sealed = cipher.encrypt("memo", table="visit", column="notes", row_id="v-1")
    opened = other_reader.open_service_key(row)
    assert opened.decrypt(sealed, table="visit", column="notes", row_id="v-1") == "memo"


def test_a_key_taken_out_of_the_ring_no_longer_opens_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring_file = _ring_file(tmp_path)
    wrapping, reading = Vault(ring_file, _shred(tmp_path)), Vault(ring_file, _shred(tmp_path))
    old = _wrapped(wrapping, "c-1")
    _add_key(ring_file)
    with ring_file.editing() as editor:
        editor.write(editor.read().without([old[0]]))

    # A process looks at the ring before it wraps...
    _wrapped(wrapping, "c-2")
    assert old[0] not in wrapping.key_ids
    assert not _reads(wrapping, "c-1", old)
    # ... and one that only reads looks every RING_CHECK_SECONDS.
    monkeypatch.setattr(vault_module, "RING_CHECK_SECONDS", 0.0)
    assert not _reads(reading, "c-1", old)
    assert old[0] not in reading.key_ids


def test_a_fixed_ring_opens_with_any_key_and_wraps_with_the_newest(tmp_path: Path) -> None:
    older, newest = secrets.token_bytes(32), secrets.token_bytes(32)
    wrapped_by_older = _wrapped(Vault(older, _shred(tmp_path)), "c-1")
    vault = Vault(FixedRing(MasterKeyRing((older, newest))), _shred(tmp_path))
    assert _reads(vault, "c-1", wrapped_by_older)
    assert _wrapped(vault, "c-2")[0] == master_key_id(newest)
    # A key outside the ring opens nothing (and a wrong key fails cleanly, never garbage).
    assert not _reads(Vault(secrets.token_bytes(32), _shred(tmp_path)), "c-1", wrapped_by_older)
    with pytest.raises(DecryptionError):
        vault.open_customer("c-other", identity=wrapped_by_older[1], profile=None)
    ciphers = vault.open_customer("c-1", identity=wrapped_by_older[1], profile=None)
    with pytest.raises(LookupError):
        ciphers.for_scope(KeyScope.PROFILE)


def test_an_unreadable_ring_file_leaves_a_running_vault_with_the_keys_it_has(
    tmp_path: Path,
) -> None:
    ring_file = _ring_file(tmp_path)
    vault = Vault(ring_file, _shred(tmp_path))
    before = _wrapped(vault, "c-1")
    ring_file.path.write_text("not a key\n")
    assert _wrapped(vault, "c-2")[0] == before[0]
    assert _reads(vault, "c-1", before)
