"""Bodies and answers of the administration API. Request bodies refuse unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, Field, StrictBool, StringConstraints, model_validator

from app.kit.schemas import Patch, Strict
from app.roles import Role
from app.validation.patterns import LINE

StoreCode = Annotated[
    str, StringConstraints(pattern=r"^[A-Z0-9]{2,16}$", min_length=2, max_length=16)
]
Login = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{2,63}$", min_length=3, max_length=64)
]
ClientName = Login
# No control characters: PostgreSQL refuses NUL in text (the fuzzer found it as a 503).
DisplayText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=LINE)
]
Password = Annotated[str, StringConstraints(min_length=12, max_length=256)]
ClockTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]

# Not `auditor`: auditors approve admins' changes, so only an operator on the machine makes them
# (`shopvault create-auditor`).
StaffRole = Literal[Role.SALES, Role.TECHNICIAN, Role.MANAGER, Role.ADMIN]
ClientRole = Literal[Role.BILLING_SYSTEM, Role.FRAUD_SYSTEM]


# --- stores -------------------------------------------------------------------------------------


class OpeningHours(Strict):
    """Local time in Asia/Tokyo, the same every day; `open` is before `close`."""

    open: ClockTime = Field(examples=["10:00"])
    close: ClockTime = Field(examples=["20:00"])

    @model_validator(mode="after")
    def _opens_before_closing(self) -> Self:
        # Zero-padded HH:MM strings order like the times they name.
        if self.open >= self.close:
            raise ValueError("open must be before close")
        return self


class StoreCreate(Strict):
    code: StoreCode = Field(examples=["S003"])
    name: DisplayText
    opening_hours: OpeningHours


class StoreOut(BaseModel):
    id: str
    code: str
    name: str
    opening_hours: OpeningHours
    created_at: datetime


# --- staff --------------------------------------------------------------------------------------


PENDING_DESCRIPTION = (
    "True while an admin's change that opens a way to customer data (creation, re-activation, "
    "role, store, password; for clients also a new secret) waits for an auditor's approval "
    "(`POST …/approve`): until then the account cannot log in."
)


class StaffCreate(Strict):
    """A new member waits for an auditor's approval, and the password is temporary: it must be
    replaced at the first login, and ends 72 hours after it was set."""

    login: Login
    display_name: DisplayText
    role: StaffRole
    store: StoreCode | None = Field(
        default=None,
        description="Store code: required for sales, technician and manager; none otherwise.",
    )
    password: Password = Field(
        description="Write-only. At least 12 characters, not containing the login."
    )
    active: StrictBool = True


class StaffPatch(Patch):
    """Any of these fields; the login never changes. A change of role, store or password, or a
    deactivation, ends every token the person holds. A change of role, store or password, or a
    re-activation, waits for an auditor's approval; a password set here is temporary."""

    nullable: ClassVar[frozenset[str]] = frozenset({"store"})

    display_name: DisplayText | None = None
    role: StaffRole | None = None
    store: StoreCode | None = None
    password: Password | None = Field(default=None, description="Write-only.")
    active: StrictBool | None = None


class StaffOut(BaseModel):
    id: str
    login: str
    display_name: str
    role: Role
    store: str | None = Field(description="The store code; none for auditors and admins.")
    active: bool
    pending_approval: bool = Field(description=PENDING_DESCRIPTION)
    created_at: datetime
    updated_at: datetime


# --- system clients -----------------------------------------------------------------------------


class ClientCreate(Strict):
    name: ClientName
    role: ClientRole
    active: StrictBool = True


class ClientPatch(Patch):
    """The name (the client's `client_id`) never changes. Deactivation or a change of role ends
    every token the client holds."""

    role: ClientRole | None = None
    active: StrictBool | None = None


class ClientOut(BaseModel):
    id: str
    name: str
    client_id: str = Field(description="What the client sends as `client_id`: its name.")
    role: Role
    active: bool
    pending_approval: bool = Field(description=PENDING_DESCRIPTION)
    created_at: datetime
    updated_at: datetime


class ClientWithSecret(ClientOut):
    client_secret: str = Field(description="Shown this once; only its hash is kept.")


# --- lists --------------------------------------------------------------------------------------

Item = TypeVar("Item", bound=BaseModel)


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    next: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class StoreList(Page[StoreOut]):
    pass


class StaffList(Page[StaffOut]):
    pass


class ClientList(Page[ClientOut]):
    pass
