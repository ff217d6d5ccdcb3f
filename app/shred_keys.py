"""Shred keys: the part of every customer data key that lives outside the database.

A data key wrapped by the master key sits in ``customer_key``, so a copy of the database taken
before an erasure holds it — and the live master key would open it. To make erasure reach such
copies, the database holds each data key masked: ``data key XOR pad``, where the pad is an
HMAC of the customer and scope under a *shred key* kept in a file outside the database
(``SHOPVAULT_SHRED_KEYS_FILE``, default ``DATA_DIR/shred.keys``). Customers are spread over
``BUCKETS`` buckets by their id; a bucket's shred key has versions, and the database records
which version is current (``shred_bucket``, ``app/shredding.py``).

Erasing a customer moves every other key of their bucket to a new version of the bucket's shred
key in the same transaction, then destroys the old version here. From then on no live key opens
the erased customer's ciphertexts, in the database or in any copy of it. (A copy of *this* file
from before the erasure would, with that database copy: back it up apart from the database and
keep those copies only as long as the README says.)

The file holds one line per key, ``bucket version key``, and is only ever replaced whole, under
an exclusive lock (``app.keyfiles``); a process reads it again when it has changed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from app.crypto import DATA_KEY_BYTES, WRAPPED_KEY_BYTES, HmacSha256, KeyScope, xor
from app.keyfiles import (
    KEY_BYTES,
    KeyError_,
    Stamp,
    create_exclusively,
    encode_key,
    ensure_directory,
    file_stamp,
    replace_atomically,
    stamp_of,
)

BUCKETS = 4096
FIRST_VERSION = 1
# How often a process looks whether the file changed (a missing key always looks at once).
CHECK_SECONDS = 1.0
HEADER = (
    "# shopvault shred keys: bucket version key, one per line. Every customer data key in the\n"
    "# database is masked by one of them; without this file no customer data can be read.\n"
    "# Back it up apart from the database (README, 'Backups and erasure').\n"
)
# A masked data key is stored as the master key's wrap of (data key XOR pad), then this marker
# and the shred key version (4 bytes, big-endian). A stored key without it is unmasked (made
# before shred keys existed).
_MARKER = b"S"
_TRAILER_BYTES = len(_MARKER) + 4

log = logging.getLogger(__name__)


class ShredKeyMissing(Exception):
    """The shred key a data key is masked with is not in the file (destroyed, or never there)."""


def bucket_of(customer_id: str) -> int:
    digest = hashlib.sha256(b"shopvault/shred-bucket/" + customer_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") % BUCKETS


def with_version(wrapped: bytes, version: int) -> bytes:
    return wrapped + _MARKER + version.to_bytes(4, "big")


def split_stored(stored: bytes) -> tuple[bytes, int | None]:
    """(the master key's wrap, the shred key version or None if unmasked) of a stored key."""
    stored = bytes(stored)
    # By length: an unmasked key is a bare wrap, whose last bytes may be anything.
    if len(stored) == WRAPPED_KEY_BYTES + _TRAILER_BYTES and stored[-_TRAILER_BYTES:-4] == _MARKER:
        return stored[:-_TRAILER_BYTES], int.from_bytes(stored[-4:], "big")
    return stored, None


def _pad_message(customer_id: str, scope: KeyScope) -> bytes:
    return f"shopvault/shred-pad/v1\n{customer_id}\n{scope.value}".encode()


def _parse(text: str, where: str) -> dict[tuple[int, int], bytes]:
    keys: dict[tuple[int, int], bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            bucket, version = int(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            raise KeyError_(f"{where} line {number} is not 'bucket version key'") from None
        if len(parts) != 3 or not 0 <= bucket < BUCKETS or version < FIRST_VERSION:
            raise KeyError_(f"{where} line {number} is not 'bucket version key'")
        try:
            # Only this module writes the file: the base64url of exactly 32 random bytes.
            key = base64.urlsafe_b64decode(parts[2] + "=")
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise KeyError_(f"{where} line {number} does not hold a {KEY_BYTES}-byte key")
        keys[(bucket, version)] = key
    return keys


def _render(keys: Mapping[tuple[int, int], bytes]) -> str:
    lines = (f"{b} {v} {encode_key(keys[(b, v)])}\n" for b, v in sorted(keys))
    return HEADER + "".join(lines)


class ShredKeys:
    """The shred key file, as a process sees it: read once, again when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._keys: dict[tuple[int, int], bytes] = {}
        # Each key's HMAC, made when first used; emptied whenever the keys change (``_use``).
        self._macs: dict[tuple[int, int], HmacSha256] = {}
        self._stamp: Stamp = None
        self._checked_at = 0.0

    def __repr__(self) -> str:
        return f"ShredKeys({self.path})"

    def prepare(self) -> ShredKeys:
        """Create the file (every bucket's first version) if there is none, and read it."""
        ensure_directory(self.path.parent)
        first = {(b, FIRST_VERSION): secrets.token_bytes(KEY_BYTES) for b in range(BUCKETS)}
        if create_exclusively(self.path, _render(first)):
            log.warning(
                "created the shred key file; back it up apart from the database",
                extra={"event": "shred_keys", "path": str(self.path)},
            )
        self._load()
        return self

    # --- reading ------------------------------------------------------------------------------

    def _current_stamp(self) -> Stamp:
        return file_stamp(self.path)

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as handle:
            stamp = stamp_of(os.fstat(handle.fileno()))
            text = handle.read()
        self._use(_parse(text, str(self.path)))
        self._stamp = stamp
        self._checked_at = time.monotonic()

    def _refresh(self, *, force: bool) -> None:
        if not force and time.monotonic() - self._checked_at < CHECK_SECONDS:
            return
        if self._current_stamp() != self._stamp:
            self._load()
        self._checked_at = time.monotonic()

    def key(self, bucket: int, version: int) -> bytes:
        self._refresh(force=False)
        found = self._keys.get((bucket, version))
        if found is None:
            self._refresh(force=True)
            found = self._keys.get((bucket, version))
        if found is None:
            raise ShredKeyMissing(f"shred key {bucket}/{version} is not in {self.path}")
        return found

    def versions(self) -> dict[int, list[int]]:
        """Every bucket's versions in the file (as read now)."""
        self._refresh(force=True)
        out: dict[int, list[int]] = {}
        for bucket, version in sorted(self._keys):
            out.setdefault(bucket, []).append(version)
        return out

    # --- masking ------------------------------------------------------------------------------

    def _use(self, keys: dict[tuple[int, int], bytes]) -> None:
        # An HMAC's state opens as much as its key: none of a destroyed key stays behind.
        self._keys, self._macs = keys, {}

    def _mac(self, bucket: int, version: int) -> HmacSha256:
        key = self.key(bucket, version)
        mac = self._macs.get((bucket, version))
        if mac is None:
            mac = self._macs[(bucket, version)] = HmacSha256(key)
        return mac

    def pad(self, customer_id: str, scope: KeyScope, version: int) -> bytes:
        pad = self._mac(bucket_of(customer_id), version).digest(_pad_message(customer_id, scope))
        assert len(pad) == DATA_KEY_BYTES
        return pad

    def mask(self, data_key: bytes, customer_id: str, scope: KeyScope, version: int) -> bytes:
        """The data key masked (or a masked key unmasked: XOR is its own inverse)."""
        return xor(data_key, self.pad(customer_id, scope, version))

    def repad(
        self, customer_id: str, scope: KeyScope, bucket: int, old: int | None, new: int
    ) -> bytes:
        """What turns a key of ``bucket`` masked with version ``old`` of its shred key (None:
        not masked) into the key masked with version ``new``: the XOR of both pads."""
        message = _pad_message(customer_id, scope)
        pad = self._mac(bucket, new).digest(message)
        if old is None:
            return pad
        return xor(pad, self._mac(bucket, old).digest(message))

    # --- changing the file --------------------------------------------------------------------

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[tuple[int, int], bytes]]:
        """The file's keys, read under its lock; written back whole if changed."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self._current_stamp() != self._stamp:
                self._load()
            keys = dict(self._keys)
            yield keys
            if keys != self._keys:
                replace_atomically(self.path, _render(keys))
                # Every writer holds the lock: the file is the one just written.
                self._use(keys)
                self._stamp = self._current_stamp()
        finally:
            os.close(fd)

    def ensure(self, versions: Mapping[int, int]) -> None:
        """Every ``bucket: version`` has a key (made now if missing). Called before the database
        names a version, so no committed row names a key that was never written."""
        self._refresh(force=False)
        if all((b, v) in self._keys for b, v in versions.items()):
            return
        with self._editing() as keys:
            for bucket, version in versions.items():
                keys.setdefault((bucket, version), secrets.token_bytes(KEY_BYTES))

    def destroy_below(self, versions: Mapping[int, int]) -> int:
        """Destroy every key of each bucket older than its given version (the current one, as
        committed in the database); how many went."""
        if not versions:
            return 0
        with self._editing() as keys:
            doomed = [(b, v) for b, v in keys if b in versions and v < versions[b]]
            for entry in doomed:
                del keys[entry]
        if doomed:
            log.info(
                "shred keys destroyed",
                extra={"event": "shred_keys", "destroyed": len(doomed), "buckets": len(versions)},
            )
        return len(doomed)
