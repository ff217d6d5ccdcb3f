"""Giving customers registered before proofs of presence existed their document-proof hash
(run by the migration that added it; needs the keys, as ``shopvault migrate`` has them)."""

from __future__ import annotations

from sqlalchemy import Connection, and_, select, update

from app.config import Settings
from app.crypto import KeyScope
from app.keyring import master_ring_source
from app.keys import load_keys
from app.models import Customer, CustomerKey
from app.presence.proofs import ProofKeys, new_salt
from app.shred_keys import ShredKeys
from app.vault import Vault


def backfill_document_hashes(connection: Connection) -> int:
    """Hash the kept document number of every customer that has one and no hash yet."""
    rows = connection.execute(
        select(Customer.id, Customer.document_number_enc, CustomerKey.wrapped_key)
        .join(
            CustomerKey,
            and_(
                CustomerKey.customer_id == Customer.id,
                CustomerKey.scope == KeyScope.IDENTITY.value,
            ),
        )
        .where(Customer.document_number_enc.is_not(None), Customer.document_hash.is_(None))
    ).all()
    if not rows:
        return 0
    settings = Settings()
    proof_keys = ProofKeys(load_keys(settings).index)
    # Rows this old are unmasked: the shred key file is not needed (nor made) here.
    vault = Vault(master_ring_source(settings), ShredKeys(settings.resolved_shred_keys_file))
    for customer_id, blob, wrapped in rows:
        assert blob is not None  # selected for it
        cipher = vault.open_customer(customer_id, identity=wrapped, profile=None).for_scope(
            KeyScope.IDENTITY
        )
        number = cipher.decrypt(
            blob, table="customer", column="document_number", row_id=customer_id
        )
        salt = new_salt()
        connection.execute(
            update(Customer)
            .where(Customer.id == customer_id)
            .values(
                proof_salt=salt,
                document_hash=proof_keys.document_hash(salt, customer_id, number),
            )
        )
    return len(rows)
