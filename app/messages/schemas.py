"""Message bodies. A send names a template and its variables; nothing chooses the sender or the
address, and no answer carries the address or number a message goes to."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.messages.catalog import CATALOG, VariableType
from app.messages.rules import Category, Channel

TemplateId = Annotated[
    str,
    StringConstraints(max_length=64),
    Field(
        description="The id of an approved template (`GET /message-templates`).",
        json_schema_extra={"enum": sorted(CATALOG.templates)},
    ),
]
VariableValue = (
    Annotated[str, StringConstraints(max_length=1000)] | Annotated[int, Field(ge=0, le=10**12)]
)


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    template: TemplateId
    variables: dict[Annotated[str, StringConstraints(max_length=64)], VariableValue] = Field(
        default_factory=dict,
        max_length=20,
        description="Exactly the variables the template declares, by name: `text` (no links, "
        "e-mail addresses or long numbers), `date` (YYYY-MM-DD), `time` (HH:MM), `number`.",
    )


class MessageStatus(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    SENT = "sent"
    FAILED = "failed"


class MessageAccepted(BaseModel):
    id: str
    status: MessageStatus


class MessageView(BaseModel):
    """A message's history and delivery status; never its address, number or text."""

    id: str
    customer_id: str
    channel: Channel
    template: str
    category: Category
    status: MessageStatus
    urgent: bool
    created_at: datetime
    scheduled_for: datetime | None = Field(
        description="When delivery is (next) due, while it is queued or scheduled."
    )
    sent_at: datetime | None
    failure_reason: str | None = Field(description="Why delivery failed, as a short code.")


class MessageList(BaseModel):
    items: list[MessageView]
    next: str | None


class VariableView(BaseModel):
    name: str
    type: VariableType
    max_length: int


class TemplateView(BaseModel):
    id: str
    title: str
    category: Category
    channels: list[Channel]
    variables: list[VariableView]


class TemplateList(BaseModel):
    items: list[TemplateView]
    next: None = None


class PresenceCodeAccepted(BaseModel):
    """The same answer whether or not the customer exists or has a phone."""

    status: Literal["accepted"] = "accepted"
    expires_in: int = Field(description="Seconds for which a code sent now stays valid.")
