"""Where a purge re-masks keys: in the process, or in worker processes of its own.

Moving a shred key bucket on re-masks every key left in it (``app/shredding.py``). A purge moves
every bucket its erasures touched, which with a million customers staying is millions of keys:
opening, re-masking and sealing them is CPU work that would hold up the purge's own process,
which meanwhile reads the next batch and writes the last one. ``shopvault purge`` on PostgreSQL
hands each batch to a worker process instead (one per transaction it runs at once), so the
re-masking, the purge's own work and the database's share the machine's cores.

A worker opens the master key ring and the shred key file itself, from the same settings, and
reads the file again when a version it is asked for is not in it yet (the purge writes a
bucket's next version before it asks). Its answer names the master key it wrapped with, as the
in-process re-mask does.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Protocol

from app.config import Settings
from app.keyring import master_ring_source
from app.shred_keys import ShredKeys
from app.vault import Vault

Keys = Sequence[tuple[str, str, bytes]]


class Remasker(Protocol):
    async def __call__(self, rows: Keys, versions: Mapping[int, int]) -> tuple[str, list[bytes]]:
        """Stored keys (customer id, scope, ``wrapped_key``) masked with their bucket's version
        in ``versions``: the master key's id and each new ``wrapped_key``, in order."""
        ...


def in_process(vault: Vault) -> Remasker:
    async def remask(rows: Keys, versions: Mapping[int, int]) -> tuple[str, list[bytes]]:
        return vault.remask_customer_keys(rows, versions)

    return remask


@contextmanager
def in_workers(settings: Settings, workers: int) -> Iterator[Remasker]:
    """``workers`` processes re-masking, for as long as the block lasts."""
    pool = ProcessPoolExecutor(
        workers,
        # Not forked from a process with an event loop, threads and connections.
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start,
        initargs=(settings,),
    )

    async def remask(rows: Keys, versions: Mapping[int, int]) -> tuple[str, list[bytes]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, _remask, list(rows), dict(versions))

    try:
        yield remask
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_vault: Vault | None = None


def _start(settings: Settings) -> None:
    global _vault
    _vault = Vault(master_ring_source(settings), ShredKeys(settings.resolved_shred_keys_file))


def _remask(rows: Keys, versions: dict[int, int]) -> tuple[str, list[bytes]]:
    assert _vault is not None, "a re-masking worker starts with its vault"
    return _vault.remask_customer_keys(rows, versions)
