"""Every ORM model, imported here so that Alembic and the mappers see them all."""

from app.models.access_event import (
    AccessEvent,
    AccessEventCustomer,
    AuditChain,
    AuditChainRegistry,
    AuditCheckpoint,
)
from app.models.base import Base
from app.models.customer import ConsentEvent, Contract, Customer, CustomerKey, ShredBucket
from app.models.identity import RevokedToken, Staff, Store, SystemClient
from app.models.master_key import MasterKeyRetirement
from app.models.message import Message, PresenceCode
from app.models.monitoring import AccessReview, Alert
from app.models.paper_form import PaperForm
from app.models.subject_request import SubjectRequest
from app.models.visit import IdempotentRequest, RepairStatusChange, ServiceKey, Visit

__all__ = [
    "AccessEvent",
    "AccessEventCustomer",
    "AccessReview",
    "Alert",
    "AuditChain",
    "AuditChainRegistry",
    "AuditCheckpoint",
    "Base",
    "ConsentEvent",
    "Contract",
    "Customer",
    "CustomerKey",
    "IdempotentRequest",
    "MasterKeyRetirement",
    "Message",
    "PaperForm",
    "PresenceCode",
    "RepairStatusChange",
    "RevokedToken",
    "ServiceKey",
    "ShredBucket",
    "Staff",
    "Store",
    "SubjectRequest",
    "SystemClient",
    "Visit",
]
