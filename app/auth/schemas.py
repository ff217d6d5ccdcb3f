from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.roles import Role


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int


class Me(BaseModel):
    id: str
    login: str
    role: Role
    store: str | None = Field(description="The store code; none for auditors, admins and clients.")


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current: str = Field(min_length=1, max_length=256)
    new: str = Field(min_length=12, max_length=256)
