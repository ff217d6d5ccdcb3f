"""Request body bases: unknown fields are refused (mass assignment), patches change something."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, ClassVar, Self

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, model_validator


class Strict(BaseModel):
    """A request body: a field the contract does not name is a ``422``."""

    model_config = ConfigDict(extra="forbid")


class Patch(Strict):
    """A partial update: only the fields sent change, and at least one must be sent."""

    # Fields that may be sent as ``null`` on purpose, to clear them (any other needs a value).
    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _not_empty_no_stray_nulls(self) -> Self:
        sent = self.model_fields_set
        if not sent:
            raise ValueError("send at least one field to change")
        for name in sent - self.nullable:
            if getattr(self, name) is None:
                raise ValueError(f"{name} may not be null")
        return self


def _has_utc_equivalent(moment: datetime) -> datetime:
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range") from None
    return moment


# A point in time with an offset (kept as sent); one with no UTC equivalent is a ``422``.
Instant = Annotated[AwareDatetime, AfterValidator(_has_utc_equivalent)]
