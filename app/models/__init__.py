"""Every ORM model, imported here so that Alembic and the mappers see them all."""

from app.models.access_event import AccessEvent, AccessEventCustomer, AuditChain
from app.models.base import Base
from app.models.identity import RevokedToken, Staff, Store, SystemClient

__all__ = [
    "AccessEvent",
    "AccessEventCustomer",
    "AuditChain",
    "Base",
    "RevokedToken",
    "Staff",
    "Store",
    "SystemClient",
]
