"""The one place that touches python-jose: issuing and strictly checking access tokens.

One algorithm (HS256), every registered claim required, the issuer and audience checked, a token
issued in the future refused, and the token's size capped before any decoding happens.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from jose import JWTError, jwt

from app.audit.events import Actor
from app.errors import Unauthorized
from app.roles import Role

# What a token with ``password_change_required`` may still call.
SELF_SERVICE_PATHS = frozenset({"/auth/password", "/auth/me", "/auth/logout"})

ALGORITHM = "HS256"
# What our tokens' header holds. Anything else — a ``kid``, ``jku``, ``jwk`` or ``x5u`` pointing
# at a key, ``crit`` extensions — is a request to trust something we never issued.
_HEADER = frozenset({"alg", "typ"})
MAX_TOKEN_LENGTH = 4096
CLOCK_SKEW_SECONDS = 30
_REQUIRED = ("sub", "role", "iss", "aud", "iat", "exp", "jti", "ae", "kind", "login")
# Tokens this process has verified (signature, header, claims), by their exact text: a token is
# presented on every request of a session, and decoding it again gives the same claims. Only its
# expiry can change; it is checked on each use. Bounded: the oldest entry goes first.
VERIFIED_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class TokenClaims:
    subject: str
    kind: str  # "staff" | "client"
    login: str
    role: Role
    store_id: str | None
    store_code: str | None
    terminal: str | None
    auth_epoch: int
    jti: str
    issued_at: int
    expires_at: int
    # Logged in with a temporary password (one an admin set): only the self-service routes
    # (``SELF_SERVICE_PATHS``) accept the token until the holder sets their own.
    password_change_required: bool = False

    @property
    def actor(self) -> Actor:
        return Actor(
            name=self.login,
            id=self.subject,
            role=self.role.value,
            store=self.store_code,
            terminal=self.terminal,
        )


# The caller of a request is exactly what its verified token says (checked against the
# database once per request by the unit of work).
Principal = TokenClaims


class TokenCodec:
    def __init__(self, key: bytes, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self._verified: dict[str, TokenClaims] = {}

    def issue(
        self,
        *,
        subject: str,
        kind: str,
        login: str,
        role: Role,
        auth_epoch: int,
        store_id: str | None = None,
        store_code: str | None = None,
        terminal: str | None = None,
        password_change_required: bool = False,
    ) -> tuple[str, TokenClaims]:
        now = int(time.time())
        claims = TokenClaims(
            subject=subject,
            kind=kind,
            login=login,
            role=role,
            store_id=store_id,
            store_code=store_code,
            terminal=terminal,
            auth_epoch=auth_epoch,
            jti=str(uuid.uuid4()),
            issued_at=now,
            expires_at=now + self.ttl_seconds,
            password_change_required=password_change_required,
        )
        payload: dict[str, Any] = {
            "sub": subject,
            "kind": kind,
            "login": login,
            "role": role.value,
            "ae": auth_epoch,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "exp": claims.expires_at,
            "jti": claims.jti,
        }
        if store_code is not None:
            payload["store"] = store_code
            payload["sid"] = store_id
        if terminal is not None:
            payload["term"] = terminal
        if password_change_required:
            payload["password_change_required"] = True
        return jwt.encode(payload, self._key, algorithm=ALGORITHM), claims

    def decode(self, token: str) -> TokenClaims:
        """The token's claims, strictly checked. Whether the token is still current (its
        holder's epoch, a logout) is for the database to say, on every request."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._verified) >= VERIFIED_TOKENS:
                self._verified.pop(next(iter(self._verified)), None)
            self._verified[token] = claims
        elif claims.expires_at < int(time.time()):  # jose's own test, with no leeway
            self._verified.pop(token, None)
            raise Unauthorized("The token is not valid.")
        return claims

    def _decode(self, token: str) -> TokenClaims:
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise Unauthorized("The token is not valid.")
        try:
            header = jwt.get_unverified_header(token)
            if (
                header.get("alg") != ALGORITHM
                or header.get("typ", "JWT") != "JWT"
                or not header.keys() <= _HEADER
            ):
                raise Unauthorized("The token is not valid.")
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "verify_signature": True,
                    "verify_aud": True,
                    "verify_iat": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iss": True,
                    "verify_sub": True,
                    "verify_jti": True,
                    "require_aud": True,
                    "require_iat": True,
                    "require_exp": True,
                    "require_iss": True,
                    "require_sub": True,
                    "require_jti": True,
                    "leeway": 0,
                },
            )
        except JWTError as exc:
            raise Unauthorized("The token is not valid.") from exc
        return _claims_from(payload)


def _claims_from(payload: dict[str, Any]) -> TokenClaims:
    try:
        if any(name not in payload for name in _REQUIRED):
            raise ValueError("missing claim")
        issued_at, expires_at, epoch = payload["iat"], payload["exp"], payload["ae"]
        if not all(type(v) is int for v in (issued_at, expires_at, epoch)):
            raise ValueError("bad numeric claim")
        if issued_at > time.time() + CLOCK_SKEW_SECONDS:
            raise ValueError("issued in the future")
        kind = payload["kind"]
        if kind not in {"staff", "client"}:
            raise ValueError("bad kind")
        strings = [payload["sub"], payload["login"], payload["jti"]]
        optional = [payload.get("store"), payload.get("sid"), payload.get("term")]
        if not all(isinstance(v, str) for v in strings) or not all(
            v is None or isinstance(v, str) for v in optional
        ):
            raise ValueError("bad string claim")
        change_required = payload.get("password_change_required", False)
        if type(change_required) is not bool:
            raise ValueError("bad password_change_required claim")
        return TokenClaims(
            subject=payload["sub"],
            kind=kind,
            login=payload["login"],
            role=Role(payload["role"]),
            store_id=payload.get("sid"),
            store_code=payload.get("store"),
            terminal=payload.get("term"),
            auth_epoch=epoch,
            jti=payload["jti"],
            issued_at=issued_at,
            expires_at=expires_at,
            password_change_required=change_required,
        )
    except (ValueError, TypeError) as exc:
        raise Unauthorized("The token is not valid.") from exc
