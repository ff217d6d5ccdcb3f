from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.roles import Role


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    password_change_required: Literal[True] | None = Field(
        default=None,
        description="Present (true) when the password is temporary (set by an admin): the "
        "token is then good only for POST /auth/password, GET /auth/me and POST /auth/logout.",
    )


class Me(BaseModel):
    id: str
    login: str
    role: Role
    store: str | None = Field(description="The store code; none for auditors, admins and clients.")
    password_change_required: bool = Field(
        description="True when logged in with a temporary password: set your own first."
    )


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current: str = Field(min_length=1, max_length=256)
    new: str = Field(min_length=12, max_length=256)
