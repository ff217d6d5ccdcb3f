"""The service's secrets: JWT signing key, master (key-wrapping) key ring, blind-index key.

Production sets them in the environment. Otherwise they are generated once into the data
directory (mode 0600, written whole and linked into place, so that two processes starting
together agree and neither reads a half-written key) with a warning. The master key is a ring
(``app.keyring``) so that it can be rotated while the service runs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from app.config import Settings
from app.keyfiles import (
    KEY_BYTES,
    KeyError_,
    create_exclusively,
    decode_key,
    encode_key,
    ensure_directory,
    key_path,
    warn_generated,
)
from app.keyring import MasterKeyRing, master_ring_source

__all__ = [
    "KEY_BYTES",
    "KEY_NAMES",
    "KeyError_",
    "Keys",
    "decode_key",
    "encode_key",
    "key_path",
    "load_keys",
]

KEY_NAMES = ("jwt", "master", "index")


@dataclass(frozen=True)
class Keys:
    jwt: bytes = field(repr=False)
    master_ring: MasterKeyRing
    index: bytes = field(repr=False)


def _load_or_create(data_dir: Path, name: str) -> bytes:
    path = key_path(data_dir, name)
    ensure_directory(data_dir)
    if create_exclusively(path, encode_key(secrets.token_bytes(KEY_BYTES)) + "\n"):
        warn_generated(name, path)
    return decode_key(path.read_text(), name)


def _single_key(settings: Settings, name: str) -> bytes:
    configured: SecretStr | None = getattr(settings, f"{name}_key")
    if configured is not None:
        return decode_key(configured.get_secret_value(), name)
    return _load_or_create(settings.data_dir, name)


def load_keys(settings: Settings) -> Keys:
    """Keys from the settings, or from (possibly new) files in the data directory."""
    jwt = _single_key(settings, "jwt")
    ring = master_ring_source(settings).prepare()
    index = _single_key(settings, "index")
    if len({jwt, index, *ring.keys}) != 2 + len(ring.keys):
        raise KeyError_("the JWT, master and index keys must be different")
    return Keys(jwt=jwt, master_ring=ring, index=index)
