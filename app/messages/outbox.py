"""The outbox worker: claim due messages, deliver them, record the outcome.

Two short transactions per batch, neither held open while talking to a mail server or gateway:
claim (a lease: ``claimed_by`` until ``claim_expires_at``), then — after the batch was delivered,
its emails over one SMTP connection — finish: every message's outcome (sent, failed, or back to
the queue with exponential back-off) in one statement. A worker that dies holds its claims only
until they expire; one that is told to stop finishes the message in hand, records what it did
and gives the rest back.

Recording a batch at once widens one window: a worker killed after handing messages over (to
the SMTP server or the gateway) but before the finish commits leaves them claimed, and they are
sent again (an email with the same ``Message-ID``, an SMS with the same ``reference``) once the
claim expires — at most a batch (``OutboxPolicy.batch``), where it was one message when each was
recorded on its own. A stopped worker (SIGTERM) records before it exits. The rules and the send
time (``sent_at``) are reckoned once per batch.

The rules are checked again at send time: a customer who opted out since a marketing message
was scheduled, was suspended or erased, or removed their email address gets nothing, and no
non-urgent message goes out in the quiet hours. The address is decrypted only here, just
before delivery, and only in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict

from prometheus_client import CollectorRegistry, Counter

from app.crypto import DecryptionError, FieldCipher, KeyScope
from app.messages import repository
from app.messages.alert_mail import notify_alerts
from app.messages.delivery import (
    DeliveryFailed,
    MailBackend,
    OutgoingEmail,
    OutgoingSms,
    SendResult,
    SmsBackend,
)
from app.messages.repository import KIND_PRESENCE_CODE, Claimed, Finished
from app.messages.rules import (
    PRESENCE_CODE_TTL,
    Category,
    Channel,
    end_of_quiet_hours,
    in_quiet_hours,
)
from app.models.base import utcnow
from app.runtime import Runtime

log = logging.getLogger("shopvault.worker")

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    max_attempts: int = 6
    retry_base: timedelta = timedelta(seconds=30)
    retry_cap: timedelta = timedelta(hours=1)
    # Far longer than any delivery takes (SMTP and gateway calls time out well before).
    lease: timedelta = timedelta(minutes=5)
    batch: int = 10

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the ``attempts``-th failed attempt: 30 s, 1 min, 2 min, … up to 1 h."""
        factor: int = 1 << min(max(0, attempts - 1), 20)
        return min(self.retry_cap, self.retry_base * factor)


class WorkerMetrics:
    """Delivery counters of this worker process (no personal data in labels)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.deliveries = Counter(
            "shopvault_worker_deliveries",
            "Messages the worker finished, by channel and outcome (sent, failed).",
            ("channel", "outcome"),
            registry=self.registry,
        )
        self.retries = Counter(
            "shopvault_worker_retries",
            "Failed delivery attempts that will be retried, by channel.",
            ("channel",),
            registry=self.registry,
        )


class Changes(TypedDict, total=False):
    """The columns an outcome changes; the others stay as they were."""

    status: str
    attempts: int
    due_at: datetime
    sent_at: datetime
    failed_at: datetime
    failure_reason: str | None
    provider_reference: str | None
    body_enc: None


@dataclass(frozen=True, slots=True)
class Outcome:
    values: Changes
    label: str  # sent | failed | retry | deferred


def worker_name() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        runtime: Runtime,
        *,
        mail: MailBackend,
        sms: SmsBackend,
        policy: OutboxPolicy | None = None,
        clock: Clock = utcnow,
        name: str | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.runtime = runtime
        self.mail = mail
        self.sms = sms
        self.policy = policy or OutboxPolicy()
        self.clock = clock
        self.name = name or worker_name()
        self.metrics = metrics or WorkerMetrics()
        self._stop = asyncio.Event()

    # --- running ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the message in hand, record the batch, give the rest back, and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run_once(self, now: datetime | None = None) -> int:
        """Deliver every message due at ``now`` (default: the clock); the number handled."""
        to = self.runtime.settings.alert_email
        if to:
            await notify_alerts(self.runtime.sessions, self.mail, to, now or self.clock())
        handled = 0
        try:
            while not self.stopping:
                claimed = await self.claim(now or self.clock())
                if not claimed:
                    break
                handled += await self.deliver(claimed, now or self.clock())
        finally:
            await self.mail.idle()
        return handled

    async def run(self, poll_interval: float = 1.0) -> None:
        """Deliver until told to stop, looking for due messages every ``poll_interval``."""
        while not self.stopping:
            try:
                await self.run_once()
            except Exception:
                # The database may be away for a moment; the claims expire by themselves.
                log.exception("outbox round failed", extra={"worker": self.name})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=poll_interval)

    async def aclose(self) -> None:
        await self.mail.aclose()
        await self.sms.aclose()

    # --- claim, deliver, finish ------------------------------------------------------------

    async def claim(self, now: datetime) -> list[Claimed]:
        async with self.runtime.sessions() as session, session.begin():
            return await repository.claim_due(
                session, self.name, now, now + self.policy.lease, self.policy.batch
            )

    async def deliver(self, claimed: Sequence[Claimed], now: datetime) -> int:
        """Deliver a claimed batch and record it in one transaction; the number handled. Once
        told to stop, the messages not yet attempted are given back in the same transaction."""
        outcomes: dict[str, Outcome] = {}
        emails: list[tuple[Claimed, OutgoingEmail]] = []
        for item in claimed:
            if self.stopping:
                break
            decided = self._decide(item, now)
            if isinstance(decided, Outcome):
                outcomes[item.message.id] = decided
            elif isinstance(decided, OutgoingSms):
                outcomes[item.message.id] = self._outcome(item, now, await self._send_sms(decided))
            else:
                emails.append((item, decided))
        if emails:
            results = await self.mail.send_many([e for _, e in emails], lambda: self.stopping)
            for (item, _), result in zip(emails, results, strict=False):
                outcomes[item.message.id] = self._outcome(item, now, result)
        finished = [
            _finished(c, outcomes[c.message.id]) for c in claimed if c.message.id in outcomes
        ]
        untouched = [c.message.id for c in claimed if c.message.id not in outcomes]
        async with self.runtime.sessions() as session, session.begin():
            kept = await repository.finish_all(session, self.name, finished)
            await repository.release(session, untouched, self.name)
        for item in claimed:
            outcome = outcomes.get(item.message.id)
            if outcome is not None:
                self._report(item, outcome, kept=item.message.id in kept)
        return len(outcomes)

    def _report(self, item: Claimed, outcome: Outcome, *, kept: bool) -> None:
        message = item.message
        if not kept:
            log.warning(
                "claim lost before the outcome was recorded",
                extra={"message_id": message.id, "worker": self.name},
            )
        channel = message.channel
        if outcome.label in {"sent", "failed"}:
            self.metrics.deliveries.labels(channel, outcome.label).inc()
        elif outcome.label == "retry":
            self.metrics.retries.labels(channel).inc()
        log.info(
            "message delivery",
            extra={
                "message_id": message.id,
                "channel": channel,
                "outcome": outcome.label,
                "failure": outcome.values.get("failure_reason"),
                "attempts": outcome.values.get("attempts", message.attempts),
            },
        )

    # --- deciding and delivering -----------------------------------------------------------

    def _failed(self, item: Claimed, now: datetime, reason: str, attempts: int) -> Outcome:
        values: Changes = {
            "status": "failed",
            "failed_at": now,
            "failure_reason": reason,
            "attempts": attempts,
        }
        if item.message.kind == KIND_PRESENCE_CODE:
            values["body_enc"] = None  # a code is kept only until it is delivered
        return Outcome(values, "failed")

    def _refusal(self, item: Claimed, now: datetime) -> str | None:
        """A rule that forbids sending now, checked again at send time."""
        message = item.message
        if item.customer_state is None or item.customer_state == "erased":
            return "customer_erased"
        if message.kind == KIND_PRESENCE_CODE:
            if item.customer_state != "active":
                return "customer_suspended"
            if now - message.created_at > PRESENCE_CODE_TTL:
                return "code_expired"
            return None
        if item.customer_state == "suspended" and not message.urgent:
            return "customer_suspended"
        if message.category == Category.MARKETING:
            opted_in = (
                item.marketing_email if message.channel == Channel.EMAIL else item.marketing_sms
            )
            if not opted_in:
                return "consent_withdrawn"
        if message.channel == Channel.EMAIL and item.email_enc is None:
            return "no_address"
        return None

    def _decide(self, item: Claimed, now: datetime) -> Outcome | OutgoingEmail | OutgoingSms:
        """What to send, or the outcome without sending: refused by the rules, deferred past
        the quiet hours, or nothing that can be read."""
        message = item.message
        refusal = self._refusal(item, now)
        if refusal is not None:
            return self._failed(item, now, refusal, message.attempts)
        if message.kind != KIND_PRESENCE_CODE and not message.urgent and in_quiet_hours(now):
            return Outcome({"status": "scheduled", "due_at": end_of_quiet_hours(now)}, "deferred")
        try:
            return self._outgoing(item, now)
        except DecryptionError:
            return self._failed(item, now, "undecryptable", message.attempts + 1)

    async def _send_sms(self, sms: OutgoingSms) -> SendResult:
        try:
            return await self.sms.send(sms)
        except DeliveryFailed as failure:
            return failure

    def _outcome(self, item: Claimed, now: datetime, result: SendResult) -> Outcome:
        """Sent, failed for good, or back to the queue after its back-off."""
        message = item.message
        attempts = message.attempts + 1
        if isinstance(result, DeliveryFailed):
            if result.permanent or attempts >= self.policy.max_attempts:
                return self._failed(item, now, result.reason, attempts)
            retry_at = now + self.policy.backoff(attempts)
            if message.kind != KIND_PRESENCE_CODE and not message.urgent:
                retry_at = end_of_quiet_hours(retry_at) if in_quiet_hours(retry_at) else retry_at
            return Outcome(
                {"attempts": attempts, "due_at": retry_at, "failure_reason": result.reason},
                "retry",
            )
        values: Changes = {
            "status": "sent",
            "sent_at": now,
            "attempts": attempts,
            "failure_reason": None,
            "provider_reference": result,
        }
        if message.kind == KIND_PRESENCE_CODE:
            values["body_enc"] = None
        return Outcome(values, "sent")

    def _cipher(self, item: Claimed) -> FieldCipher:
        ciphers = self.runtime.vault.open_customer(
            item.message.customer_id, identity=None, profile=item.profile_key
        )
        return ciphers.for_scope(KeyScope.PROFILE)

    def _outgoing(self, item: Claimed, now: datetime) -> OutgoingEmail | OutgoingSms:
        """The message as it leaves: decrypted here, in memory only."""
        message = item.message
        if message.body_enc is None or item.profile_key is None:
            raise DecryptionError("nothing to send")
        cipher = self._cipher(item)

        def opened(blob: bytes, table: str, column: str, row_id: str) -> str:
            return cipher.decrypt(blob, table=table, column=column, row_id=row_id)

        body = opened(message.body_enc, "message", "body", message.id)
        if message.channel == Channel.SMS:
            if item.phone_enc is None:
                raise DecryptionError("no phone")
            phone = opened(item.phone_enc, "customer", "phone", message.customer_id)
            return OutgoingSms(message_id=message.id, to=phone, body=body)
        if item.email_enc is None or message.subject_enc is None:
            raise DecryptionError("no email")
        address = opened(item.email_enc, "customer", "email", message.customer_id)
        subject = opened(message.subject_enc, "message", "subject", message.id)
        return OutgoingEmail(
            message_id=message.id, to=address, subject=subject, body=body, date=now
        )


def _finished(item: Claimed, outcome: Outcome) -> Finished:
    """The message's row after ``outcome``: what it changes, the rest as claimed."""
    message, changes = item.message, outcome.values
    return Finished(
        message_id=message.id,
        status=changes.get("status", message.status),
        attempts=changes.get("attempts", message.attempts),
        due_at=changes.get("due_at", message.due_at),
        sent_at=changes.get("sent_at", message.sent_at),
        failed_at=changes.get("failed_at", message.failed_at),
        failure_reason=changes.get("failure_reason", message.failure_reason),
        provider_reference=changes.get("provider_reference", message.provider_reference),
        drop_body="body_enc" in changes,
    )
