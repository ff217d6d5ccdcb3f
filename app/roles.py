"""Who calls the service."""

from enum import StrEnum


class Role(StrEnum):
    SALES = "sales"
    TECHNICIAN = "technician"
    MANAGER = "manager"
    AUDITOR = "auditor"
    ADMIN = "admin"
    BILLING_SYSTEM = "billing_system"
    FRAUD_SYSTEM = "fraud_system"


STORE_ROLES = frozenset({Role.SALES, Role.TECHNICIAN, Role.MANAGER})
STAFF_ROLES = frozenset({*STORE_ROLES, Role.AUDITOR, Role.ADMIN})
CLIENT_ROLES = frozenset({Role.BILLING_SYSTEM, Role.FRAUD_SYSTEM})
# System clients whose role reads personal data: an admin's change to one waits for an auditor.
PERSONAL_DATA_CLIENT_ROLES = frozenset({Role.BILLING_SYSTEM, Role.FRAUD_SYSTEM})
