"""Outbox gauges for the API's ``/metrics``, read from the database at scrape time (the
workers are other processes; the outbox table is what they share). Labels are kinds, channels
and statuses only."""

from __future__ import annotations

import logging
import weakref

from prometheus_client import CollectorRegistry, Gauge

from app.db import DatabaseUnavailable
from app.messages import repository
from app.runtime import Runtime

log = logging.getLogger("shopvault.metrics")


class OutboxGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Gauge(
            "shopvault_outbox_messages",
            "Messages in the outbox by kind (message, presence_code), channel and status.",
            ("kind", "channel", "status"),
            registry=registry,
        )
        self.retries = Gauge(
            "shopvault_outbox_retries",
            "Delivery attempts beyond the first, over the messages in the outbox.",
            ("kind", "channel"),
            registry=registry,
        )

    async def refresh(self, runtime: Runtime) -> None:
        try:
            async with runtime.sessions() as session:
                rows = await repository.outbox_counts(session)
        except DatabaseUnavailable:
            log.warning("outbox gauges not refreshed", extra={"event": "metrics"})
            return
        self.messages.clear()
        self.retries.clear()
        retries: dict[tuple[str, str], int] = {}
        for kind, channel, status, count, retried in rows:
            self.messages.labels(kind, channel, status).set(count)
            retries[(kind, channel)] = retries.get((kind, channel), 0) + retried
        for (kind, channel), retried in retries.items():
            self.retries.labels(kind, channel).set(retried)


_gauges: weakref.WeakKeyDictionary[CollectorRegistry, OutboxGauges] = weakref.WeakKeyDictionary()


async def refresh_outbox_gauges(runtime: Runtime, registry: CollectorRegistry) -> None:
    gauges = _gauges.get(registry)
    if gauges is None:
        gauges = _gauges[registry] = OutboxGauges(registry)
    await gauges.refresh(runtime)
