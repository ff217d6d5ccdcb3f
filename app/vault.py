"""Per-customer data keys: created, wrapped by the master key ring, and opened for one request.

Each customer has two key scopes: ``identity`` (the identity-verification record, which the law
makes us keep longer) and ``profile`` (everything else), so that erasure can destroy one and keep
the other. A customer's data keys are stored masked by their bucket's shred key, which lives
outside the database (``app/shred_keys.py``): the master key wraps the masked key. Data keys that
belong to no customer (visit notes) are service keys.

New data keys are wrapped with the newest master key the process knows; the ring is read again
whenever its file has changed, and when a data key opens with none of the keys known so far (a
rotation elsewhere added the key that wraps it). AES-GCM authenticates, so trying a key that is
not the right one fails cleanly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from app.crypto import DecryptionError, FieldCipher, KeyScope, MasterKey, new_data_key, xor
from app.keyfiles import KeyError_, Stamp
from app.keyring import FixedRing, MasterKeyRing, RingSource, master_key_id
from app.models import CustomerKey, ServiceKey
from app.shred_keys import ShredKeyMissing, ShredKeys, bucket_of, split_stored, with_version

__all__ = ["SERVICE_KEY_OWNER", "CustomerCiphers", "Vault", "master_key_id"]

SERVICE_KEY_OWNER = "service"
# How often a process that only reads looks whether the ring file changed (wrapping always looks).
RING_CHECK_SECONDS = 1.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CustomerCiphers:
    identity: FieldCipher | None
    profile: FieldCipher | None

    def for_scope(self, scope: KeyScope) -> FieldCipher:
        cipher = self.identity if scope is KeyScope.IDENTITY else self.profile
        if cipher is None:
            raise LookupError(f"the {scope.value} key of this customer is not available")
        return cipher


class Vault:
    def __init__(self, keys: RingSource | bytes, shred_keys: ShredKeys) -> None:
        self._source: RingSource = (
            FixedRing(MasterKeyRing((keys,))) if isinstance(keys, bytes) else keys
        )
        self.shred_keys = shred_keys
        self._use(*self._source.load())
        # Only keys read back from committed rows are cached (see visits.service.notes_cipher).
        self._service_ciphers: dict[str, FieldCipher] = {}

    # --- the ring ---------------------------------------------------------------------------

    def _use(self, ring: MasterKeyRing, stamp: Stamp) -> None:
        # Newest first: after a rotation most data keys are wrapped by it.
        pairs = zip(ring.ids, ring.keys, strict=True)
        self._keys = [(key_id, MasterKey(key)) for key_id, key in reversed(list(pairs))]
        self._by_id = dict(self._keys)
        self._stamp = stamp
        self._checked_at = time.monotonic()

    @property
    def master_key_id(self) -> str:
        """The id of the key new data keys are wrapped with (as of the last look at the ring)."""
        return self._keys[0][0]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(key_id for key_id, _ in self._keys)

    def refresh(self, *, force: bool = False) -> bool:
        """Read the ring again if it changed (or ``force``); True if its keys changed."""
        if not force and self._source.stamp() == self._stamp:
            self._checked_at = time.monotonic()
            return False
        try:
            ring, stamp = self._source.load()
        except (OSError, KeyError_, ValueError):
            # A ring file is only ever replaced whole; keep working with the keys we have.
            log.exception("the master key ring could not be read again")
            return False
        before = self.key_ids
        self._use(ring, stamp)
        if self.key_ids == before:
            return False
        log.info(
            "master key ring read again",
            extra={"event": "key_ring", "wrapping_key": self.master_key_id, "keys": len(ring.ids)},
        )
        return True

    def _wrapping_key(self) -> tuple[str, MasterKey]:
        # Always look before wrapping: a key taken out by a rotation must not wrap new data keys.
        self.refresh()
        return self._keys[0]

    def _unwrap(self, wrapped: bytes, owner: str, scope: KeyScope, key_id: str | None) -> bytes:
        if time.monotonic() - self._checked_at > RING_CHECK_SECONDS:
            self.refresh()
        if key_id is not None and key_id not in self._by_id:
            self.refresh(force=True)
        try:
            return self._open_with_ring(wrapped, owner, scope, key_id)
        except DecryptionError:
            # Wrapped by a key this process has not seen yet: look at the ring again, once.
            if not self.refresh(force=True):
                raise
            return self._open_with_ring(wrapped, owner, scope, key_id)

    def _open_with_ring(
        self, wrapped: bytes, owner: str, scope: KeyScope, key_id: str | None
    ) -> bytes:
        named = self._by_id.get(key_id) if key_id is not None else None
        candidates = [named] if named is not None else []
        candidates += [key for _, key in self._keys if key is not named]
        for master in candidates:
            try:
                return master.unwrap(wrapped, customer_id=owner, scope=scope)
            except DecryptionError:
                continue
        raise DecryptionError("No master key of the ring opens this data key.")

    # --- customer keys ------------------------------------------------------------------------

    def new_customer_keys(
        self, customer_id: str, shred_version: int
    ) -> tuple[CustomerCiphers, list[CustomerKey]]:
        """A new customer's data keys, masked with version ``shred_version`` of their bucket's
        shred key (the bucket's current version, read from the database under a lock)."""
        bucket = bucket_of(customer_id)
        self.shred_keys.ensure({bucket: shred_version})
        ciphers: dict[KeyScope, FieldCipher] = {}
        rows: list[CustomerKey] = []
        for scope in KeyScope:
            data_key = new_data_key()
            ciphers[scope] = FieldCipher(data_key)
            key_id, stored = self.wrap_customer_key(data_key, customer_id, scope, shred_version)
            rows.append(
                CustomerKey(
                    customer_id=customer_id,
                    scope=scope.value,
                    wrapped_key=stored,
                    master_key_id=key_id,
                    shred_bucket=bucket,
                )
            )
        return CustomerCiphers(ciphers[KeyScope.IDENTITY], ciphers[KeyScope.PROFILE]), rows

    def wrap_customer_key(
        self, data_key: bytes, customer_id: str, scope: KeyScope, shred_version: int
    ) -> tuple[str, bytes]:
        """What ``customer_key`` holds: the id of the newest master key (``master_key_id``) and
        its wrap of the masked data key with the shred key version (``wrapped_key``)."""
        key_id, master = self._wrapping_key()
        return key_id, self._wrap_with(master, data_key, customer_id, scope, shred_version)

    def _wrap_with(
        self,
        master: MasterKey,
        data_key: bytes,
        customer_id: str,
        scope: KeyScope,
        shred_version: int,
    ) -> bytes:
        masked = self.shred_keys.mask(data_key, customer_id, scope, shred_version)
        wrapped = master.wrap(masked, customer_id=customer_id, scope=scope)
        return with_version(wrapped, shred_version)

    def unwrap_customer_key(self, stored: bytes, customer_id: str, scope: KeyScope) -> bytes:
        """A customer's data key from what ``customer_key.wrapped_key`` holds."""
        wrapped, shred_version = split_stored(stored)
        masked = self._unwrap(wrapped, customer_id, scope, None)
        if shred_version is None:
            return masked  # stored before shred keys existed
        try:
            return self.shred_keys.mask(masked, customer_id, scope, shred_version)
        except ShredKeyMissing as exc:
            raise DecryptionError("The shred key of this data key is gone.") from exc

    def remask_customer_keys(
        self, rows: Iterable[tuple[str, str, bytes]], versions: Mapping[int, int]
    ) -> tuple[str, list[bytes]]:
        """Stored customer keys (customer id, scope, ``wrapped_key``) masked again with their
        bucket's version in ``versions`` and wrapped by the newest master key: that key's id,
        and the new ``wrapped_key`` of each, in order."""
        key_id, master = self._wrapping_key()  # one key for all: ``master_key_id`` is shared
        shred_keys = self.shred_keys
        scopes = {scope.value: scope for scope in KeyScope}
        out = []
        for customer_id, scope_name, stored in rows:
            scope = scopes[scope_name]
            wrapped, old = split_stored(stored)
            bucket = bucket_of(customer_id)
            new = versions[bucket]
            try:
                pad = shred_keys.repad(customer_id, scope, bucket, old, new)
            except ShredKeyMissing as exc:
                raise DecryptionError("The shred key of this data key is gone.") from exc
            try:
                rewrapped = master.remask(wrapped, pad, customer_id=customer_id, scope=scope)
            except DecryptionError:
                # Wrapped by another key of the ring (before a rotation finished).
                masked = self._unwrap(wrapped, customer_id, scope, None)
                rewrapped = master.wrap(xor(masked, pad), customer_id=customer_id, scope=scope)
            out.append(with_version(rewrapped, new))
        return key_id, out

    def open_customer(
        self, customer_id: str, *, identity: bytes | None, profile: bytes | None
    ) -> CustomerCiphers:
        def unwrap(stored: bytes | None, scope: KeyScope) -> FieldCipher | None:
            if stored is None:
                return None
            return FieldCipher(self.unwrap_customer_key(stored, customer_id, scope))

        return CustomerCiphers(
            identity=unwrap(identity, KeyScope.IDENTITY), profile=unwrap(profile, KeyScope.PROFILE)
        )

    # --- service keys -------------------------------------------------------------------------

    def new_service_key(self, name: str) -> tuple[FieldCipher, ServiceKey]:
        key_id, master = self._wrapping_key()
        data_key = new_data_key()
        wrapped = master.wrap(
            data_key, customer_id=f"{SERVICE_KEY_OWNER}:{name}", scope=KeyScope.PROFILE
        )
        row = ServiceKey(name=name, wrapped_key=wrapped, master_key_id=key_id)
        return FieldCipher(data_key), row

    def cached_service_cipher(self, name: str) -> FieldCipher | None:
        return self._service_ciphers.get(name)

    def cache_service_cipher(self, name: str, cipher: FieldCipher) -> None:
        self._service_ciphers[name] = cipher

    def open_service_key(self, row: ServiceKey) -> FieldCipher:
        owner = f"{SERVICE_KEY_OWNER}:{row.name}"
        data_key = self._unwrap(row.wrapped_key, owner, KeyScope.PROFILE, row.master_key_id)
        return FieldCipher(data_key)
