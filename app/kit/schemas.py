"""Request body bases: unknown fields are refused (mass assignment), patches change something."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator


class Strict(BaseModel):
    """A request body: a field the contract does not name is a ``422``."""

    model_config = ConfigDict(extra="forbid")


class Patch(Strict):
    """A partial update: only the fields sent change, and at least one must be sent."""

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        return self
