"""Every ORM model, imported here so that Alembic and the mappers see them all."""

from app.models.access_event import AccessEvent, AccessEventCustomer, AuditChain
from app.models.base import Base
from app.models.customer import ConsentEvent, Contract, Customer, CustomerKey
from app.models.identity import RevokedToken, Staff, Store, SystemClient
from app.models.paper_form import PaperForm
from app.models.visit import IdempotentRequest, RepairStatusChange, ServiceKey, Visit

__all__ = [
    "AccessEvent",
    "AccessEventCustomer",
    "AuditChain",
    "Base",
    "ConsentEvent",
    "Contract",
    "Customer",
    "CustomerKey",
    "IdempotentRequest",
    "PaperForm",
    "RepairStatusChange",
    "RevokedToken",
    "ServiceKey",
    "Staff",
    "Store",
    "SystemClient",
    "Visit",
]
