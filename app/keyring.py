"""The master key ring: every master key that may open data keys, and the newest, which wraps.

Each data key row names the master key that wraps it (``master_key_id``, a public fingerprint of
the key). A process opens data keys with any key of its ring and wraps new ones with the newest.
``shopvault keys rotate`` (``app.key_rotation``) adds a key to the ring before anything is wrapped
with it, re-wraps the data keys, and takes an old key out only once no row names it.

The ring comes from one of two places:

- generated keys: ``DATA_DIR/master.key``, one key per line, oldest first. The file is only ever
  replaced whole (``app.keyfiles``), under a lock, so a reader sees one ring or the next, never a
  mixture; a process notices the new file (its inode changes) and reads it again.
- the environment: ``SHOPVAULT_MASTER_KEY`` wraps, ``SHOPVAULT_OTHER_MASTER_KEYS`` (comma
  separated) only open. Fixed for the life of the process; the README says how to rotate them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr

from app.config import Settings
from app.keyfiles import (
    KEY_BYTES,
    KeyError_,
    Stamp,
    create_exclusively,
    decode_key,
    encode_key,
    ensure_directory,
    file_stamp,
    key_path,
    replace_atomically,
    stamp_of,
    warn_generated,
)

MASTER = "master"
OTHER_KEYS_SETTING = "SHOPVAULT_OTHER_MASTER_KEYS"
RING_FILE_HEADER = (
    "# shopvault master keys, oldest first: the last one wraps new data keys.\n"
    "# `shopvault keys rotate` adds keys, and removes one only when no data key needs it.\n"
)


def master_key_id(master_key: bytes) -> str:
    """A short public fingerprint naming which master key wraps a data key."""
    return hashlib.sha256(b"shopvault/master-key-id/" + master_key).hexdigest()[:16]


@dataclass(frozen=True)
class MasterKeyRing:
    """Master keys, oldest first; the last one wraps. Never shown in a repr."""

    keys: tuple[bytes, ...] = field(repr=False)
    ids: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("A key ring holds at least one key.")
        if any(len(key) != KEY_BYTES for key in self.keys):
            raise ValueError(f"A master key is exactly {KEY_BYTES} bytes.")
        ids = tuple(master_key_id(key) for key in self.keys)
        if len(set(ids)) != len(ids):
            raise ValueError("A key ring holds each key once.")
        object.__setattr__(self, "ids", ids)

    @property
    def newest(self) -> bytes:
        return self.keys[-1]

    @property
    def newest_id(self) -> str:
        return self.ids[-1]

    def key(self, key_id: str) -> bytes | None:
        for candidate_id, key in zip(self.ids, self.keys, strict=True):
            if candidate_id == key_id:
                return key
        return None

    def with_newest(self, key: bytes) -> MasterKeyRing:
        return MasterKeyRing((*self.keys, key))

    def without(self, key_ids: Collection[str]) -> MasterKeyRing:
        if self.newest_id in key_ids:
            raise ValueError("The newest key of a ring is never taken out.")
        kept = tuple(k for k, i in zip(self.keys, self.ids, strict=True) if i not in key_ids)
        return MasterKeyRing(kept)


class RingSource(Protocol):
    """Where a process reads its ring from, and again when it may have changed."""

    def prepare(self) -> MasterKeyRing:
        """The ring, generating the first key if there is none yet."""

    def stamp(self) -> Stamp:
        """Cheap: changes whenever the ring may have changed."""

    def load(self) -> tuple[MasterKeyRing, Stamp]: ...


class FixedRing:
    """A ring that cannot change while the process runs (the environment's)."""

    def __init__(self, ring: MasterKeyRing) -> None:
        self._ring = ring

    def prepare(self) -> MasterKeyRing:
        return self._ring

    def stamp(self) -> Stamp:
        return None

    def load(self) -> tuple[MasterKeyRing, Stamp]:
        return self._ring, None


class RingBusy(Exception):
    """Another process holds the ring file's lock (a rotation is running)."""


def parse_ring(text: str, where: str) -> MasterKeyRing:
    keys: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            keys.append(decode_key(line, MASTER, setting=f"{where} line {number}"))
    if not keys:
        raise KeyError_(f"{where} holds no master key")
    try:
        return MasterKeyRing(tuple(keys))
    except ValueError as exc:
        raise KeyError_(f"{where} holds the same master key twice") from exc


def render_ring(ring: MasterKeyRing) -> str:
    return RING_FILE_HEADER + "".join(encode_key(key) + "\n" for key in ring.keys)


class RingFile:
    """``DATA_DIR/master.key`` and its lock file."""

    def __init__(self, data_dir: Path) -> None:
        self.path = key_path(data_dir, MASTER)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        # Staged by the single-key rotation of earlier versions; it may already wrap data keys.
        self.legacy_next = self.path.with_name(self.path.name + ".next")

    def stamp(self) -> Stamp:
        return file_stamp(self.path)

    def load(self) -> tuple[MasterKeyRing, Stamp]:
        with open(self.path, encoding="utf-8") as handle:
            stamp = stamp_of(os.fstat(handle.fileno()))
            text = handle.read()
        return parse_ring(text, str(self.path)), stamp

    def prepare(self) -> MasterKeyRing:
        ensure_directory(self.path.parent)
        first = MasterKeyRing((secrets.token_bytes(KEY_BYTES),))
        if create_exclusively(self.path, render_ring(first)):
            warn_generated(MASTER, self.path)
        if self.legacy_next.exists():
            with self.editing() as editor:
                editor.read()  # folds the staged key into the ring
        return self.load()[0]

    @contextlib.contextmanager
    def editing(self, *, wait: bool = True) -> Iterator[RingEditor]:
        """Exclusive right to change the ring file (``wait=False``: ``RingBusy`` if taken)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise RingBusy() from exc
            yield RingEditor(self)
        finally:
            os.close(fd)  # releases the lock


class RingEditor:
    """Reads and replaces the ring file; only handed out while its lock is held."""

    def __init__(self, ring_file: RingFile) -> None:
        self._file = ring_file

    def read(self) -> MasterKeyRing:
        ring = self._file.load()[0]
        legacy = self._file.legacy_next
        if legacy.exists():
            staged = decode_key(legacy.read_text(), MASTER, setting=str(legacy))
            if ring.key(master_key_id(staged)) is None:
                ring = ring.with_newest(staged)
                replace_atomically(self._file.path, render_ring(ring))
            legacy.unlink()
        return ring

    def write(self, ring: MasterKeyRing) -> None:
        replace_atomically(self._file.path, render_ring(ring))


def environment_ring(master: SecretStr, others: SecretStr | None) -> MasterKeyRing:
    newest = decode_key(master.get_secret_value(), MASTER)
    older: list[bytes] = []
    for part in (others.get_secret_value() if others else "").split(","):
        if part.strip():
            key = decode_key(part, MASTER, setting=OTHER_KEYS_SETTING)
            if key != newest and key not in older:
                older.append(key)
    return MasterKeyRing((*older, newest))


def master_ring_source(settings: Settings) -> FixedRing | RingFile:
    if settings.master_key is not None:
        return FixedRing(environment_ring(settings.master_key, settings.other_master_keys))
    if settings.other_master_keys is not None:
        raise KeyError_(f"{OTHER_KEYS_SETTING} needs SHOPVAULT_MASTER_KEY")
    return RingFile(settings.data_dir)
