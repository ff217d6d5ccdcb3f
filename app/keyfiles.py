"""Key text and key files: base64url encoding, strength checks, and writes no reader sees half-done.

A key file is always written whole to a temporary file in the same directory (mode 0600), fsynced,
then put in place in one step: ``os.link`` when the file must not exist yet (two processes
starting together: the first one's key wins and the other reads it), ``os.replace`` when it is
replaced on purpose. The directory is fsynced after, so the new name survives a power loss.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import tempfile
from pathlib import Path

KEY_BYTES = 32

log = logging.getLogger("app.keys")


# (device, inode, modification time, size) of a key file: changes whenever the file is replaced.
Stamp = tuple[int, int, int, int] | None


def stamp_of(status: os.stat_result) -> Stamp:
    return (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size)


def file_stamp(path: Path) -> Stamp:
    """The file's stamp, or None if there is no file."""
    try:
        return stamp_of(os.stat(path))
    except FileNotFoundError:
        return None


class KeyError_(ValueError):
    """A configured key is missing, malformed or too weak."""


def encode_key(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_key(text: str, name: str, *, setting: str | None = None) -> bytes:
    """A key from its text; ``setting`` names where it came from in errors (never its value)."""
    where = setting or f"SHOPVAULT_{name.upper()}_KEY"
    text = text.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyError_(f"{where} is not base64url") from exc
    if len(raw) < KEY_BYTES:
        raise KeyError_(f"{where} must be at least {KEY_BYTES} random bytes")
    if name == "master" and len(raw) != KEY_BYTES:
        # It is an AES-256 key-wrapping key: exactly 32 bytes.
        raise KeyError_(f"{where} must be exactly {KEY_BYTES} random bytes")
    if len(set(raw)) < KEY_BYTES // 4:
        raise KeyError_(f"{where} does not look random")
    return raw


def key_path(data_dir: Path, name: str) -> Path:
    return data_dir / f"{name}.key"


def warn_generated(name: str, path: Path) -> None:
    log.warning(
        "generated a development key; production must set it in the environment",
        extra={"key": name, "env": f"SHOPVAULT_{name.upper()}_KEY", "path": str(path)},
    )


def ensure_directory(directory: Path) -> None:
    # The data directory holds the generated keys: the owner's alone.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_temporary(path: Path, text: str) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
    return Path(name)


def create_exclusively(path: Path, text: str) -> bool:
    """Write ``path`` whole unless it exists; False if another writer got there first."""
    temporary = _durable_temporary(path, text)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    _fsync_directory(path.parent)
    return True


def replace_atomically(path: Path, text: str) -> None:
    """Replace ``path`` whole: a reader sees the old content or the new, never a mixture."""
    temporary = _durable_temporary(path, text)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)
