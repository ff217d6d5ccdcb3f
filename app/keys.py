"""The service's three secrets: JWT signing key, master (key-wrapping) key, blind-index key.

Production sets them in the environment. Otherwise they are generated once into the data
directory (mode 0600, created exclusively so that two processes starting together agree) with a
warning.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from app.config import Settings

log = logging.getLogger(__name__)

KEY_BYTES = 32
KEY_NAMES = ("jwt", "master", "index")


class KeyError_(ValueError):
    """A configured key is missing, malformed or too weak."""


@dataclass(frozen=True)
class Keys:
    jwt: bytes
    master: bytes
    index: bytes


def encode_key(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_key(text: str, name: str) -> bytes:
    text = text.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyError_(f"SHOPVAULT_{name.upper()}_KEY is not base64url") from exc
    if len(raw) < KEY_BYTES:
        raise KeyError_(f"SHOPVAULT_{name.upper()}_KEY must be at least {KEY_BYTES} random bytes")
    if name == "master" and len(raw) != KEY_BYTES:
        # It is an AES-256 key-wrapping key: exactly 32 bytes.
        raise KeyError_(f"SHOPVAULT_MASTER_KEY must be exactly {KEY_BYTES} random bytes")
    if len(set(raw)) < KEY_BYTES // 4:
        raise KeyError_(f"SHOPVAULT_{name.upper()}_KEY does not look random")
    return raw


def key_path(data_dir: Path, name: str) -> Path:
    return data_dir / f"{name}.key"


def _load_or_create(data_dir: Path, name: str) -> bytes:
    path = key_path(data_dir, name)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return decode_key(path.read_text(), name)
    with os.fdopen(fd, "w") as handle:
        handle.write(encode_key(secrets.token_bytes(KEY_BYTES)) + "\n")
    log.warning(
        "generated a development key; production must set it in the environment",
        extra={"key": name, "env": f"SHOPVAULT_{name.upper()}_KEY", "path": str(path)},
    )
    return decode_key(path.read_text(), name)


def load_keys(settings: Settings) -> Keys:
    """Keys from the settings, or from (possibly new) files in the data directory."""
    values: dict[str, bytes] = {}
    for name in KEY_NAMES:
        configured: SecretStr | None = getattr(settings, f"{name}_key")
        if configured is not None:
            values[name] = decode_key(configured.get_secret_value(), name)
        else:
            values[name] = _load_or_create(settings.data_dir, name)
    if len(set(values.values())) != len(values):
        raise KeyError_("the JWT, master and index keys must be different")
    return Keys(**values)
