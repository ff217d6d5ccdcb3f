"""Per-customer data keys: created, wrapped by the master key, and opened for one request.

Each customer has two key scopes: ``identity`` (the identity-verification record, which the law
makes us keep longer) and ``profile`` (everything else), so that erasure can destroy one and keep
the other. Data keys that belong to no customer (visit notes) are service keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from app.crypto import FieldCipher, KeyScope, MasterKey, new_data_key
from app.models import CustomerKey, ServiceKey

SERVICE_KEY_OWNER = "service"


def master_key_id(master_key: bytes) -> str:
    """A short public fingerprint naming which master key wraps a data key."""
    return hashlib.sha256(b"shopvault/master-key-id/" + master_key).hexdigest()[:16]


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
    def __init__(self, master_key: bytes) -> None:
        self._master = MasterKey(master_key)
        self.master_key_id = master_key_id(master_key)
        # Only keys read back from committed rows are cached (see visits.service.notes_cipher).
        self._service_ciphers: dict[str, FieldCipher] = {}

    def new_customer_keys(self, customer_id: str) -> tuple[CustomerCiphers, list[CustomerKey]]:
        ciphers: dict[KeyScope, FieldCipher] = {}
        rows: list[CustomerKey] = []
        for scope in KeyScope:
            data_key = new_data_key()
            ciphers[scope] = FieldCipher(data_key)
            rows.append(
                CustomerKey(
                    customer_id=customer_id,
                    scope=scope.value,
                    wrapped_key=self._master.wrap(data_key, customer_id=customer_id, scope=scope),
                    master_key_id=self.master_key_id,
                )
            )
        return CustomerCiphers(ciphers[KeyScope.IDENTITY], ciphers[KeyScope.PROFILE]), rows

    def open_customer(
        self, customer_id: str, *, identity: bytes | None, profile: bytes | None
    ) -> CustomerCiphers:
        def unwrap(wrapped: bytes | None, scope: KeyScope) -> FieldCipher | None:
            if wrapped is None:
                return None
            data_key = self._master.unwrap(wrapped, customer_id=customer_id, scope=scope)
            return FieldCipher(data_key)

        return CustomerCiphers(
            identity=unwrap(identity, KeyScope.IDENTITY), profile=unwrap(profile, KeyScope.PROFILE)
        )

    def new_service_key(self, name: str) -> tuple[FieldCipher, ServiceKey]:
        data_key = new_data_key()
        wrapped = self._master.wrap(
            data_key, customer_id=f"{SERVICE_KEY_OWNER}:{name}", scope=KeyScope.PROFILE
        )
        row = ServiceKey(name=name, wrapped_key=wrapped, master_key_id=self.master_key_id)
        return FieldCipher(data_key), row

    def cached_service_cipher(self, name: str) -> FieldCipher | None:
        return self._service_ciphers.get(name)

    def cache_service_cipher(self, name: str, cipher: FieldCipher) -> None:
        self._service_ciphers[name] = cipher

    def open_service_key(self, row: ServiceKey) -> FieldCipher:
        data_key = self._master.unwrap(
            row.wrapped_key, customer_id=f"{SERVICE_KEY_OWNER}:{row.name}", scope=KeyScope.PROFILE
        )
        return FieldCipher(data_key)
