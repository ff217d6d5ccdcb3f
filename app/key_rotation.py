"""``shopvault keys rotate``: a new master key wraps every data key again; data is untouched.

In one transaction every customer and service data key is unwrapped with the old master key and
wrapped with the new one. A generated key is written next to the old one (``master.key.next``)
before the commit and moved over it after, so that a crash in between leaves both keys on disk
and a second run finishes the job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import KeyScope, MasterKey
from app.keys import decode_key, key_path
from app.models import CustomerKey, ServiceKey
from app.vault import SERVICE_KEY_OWNER, master_key_id


@dataclass(frozen=True)
class RotationResult:
    customer_keys: int
    service_keys: int
    new_master_key_id: str


async def rewrap_all(session: AsyncSession, old_key: bytes, new_key: bytes) -> RotationResult:
    """Re-wrap every data key (no commit: the caller's unit of work commits)."""
    old, new = MasterKey(old_key), MasterKey(new_key)
    new_id = master_key_id(new_key)
    customers = 0
    for row in (await session.execute(select(CustomerKey).with_for_update())).scalars():
        if row.master_key_id == new_id:  # already re-wrapped by an interrupted run
            continue
        scope = KeyScope(row.scope)
        data_key = old.unwrap(row.wrapped_key, customer_id=row.customer_id, scope=scope)
        row.wrapped_key = new.wrap(data_key, customer_id=row.customer_id, scope=scope)
        row.master_key_id = new_id
        customers += 1
    services = 0
    for service in (await session.execute(select(ServiceKey).with_for_update())).scalars():
        if service.master_key_id == new_id:
            continue
        owner = f"{SERVICE_KEY_OWNER}:{service.name}"
        data_key = old.unwrap(service.wrapped_key, customer_id=owner, scope=KeyScope.PROFILE)
        service.wrapped_key = new.wrap(data_key, customer_id=owner, scope=KeyScope.PROFILE)
        service.master_key_id = new_id
        services += 1
    await session.flush()
    return RotationResult(customers, services, new_id)


def next_key_path(data_dir: Path) -> Path:
    return key_path(data_dir, "master").with_suffix(".key.next")


def stage_next_key(data_dir: Path, encoded: str) -> None:
    path = next_key_path(data_dir)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(encoded + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def promote_next_key(data_dir: Path) -> None:
    os.replace(next_key_path(data_dir), key_path(data_dir, "master"))


def staged_key(data_dir: Path) -> bytes | None:
    path = next_key_path(data_dir)
    return decode_key(path.read_text(), "master") if path.exists() else None
