"""The outbox worker against real peers: an SMTP server (aiosmtpd) and an HTTP server playing the
SMS gateway. Time is the worker's ``now``, passed in: back-off and quiet hours without sleeping."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.messages.delivery import (
    FileMail,
    FileSms,
    HttpSms,
    MailBackend,
    OutgoingEmail,
    OutgoingSms,
    SendResult,
    SmsBackend,
    SmtpMail,
)
from app.messages.outbox import OutboxPolicy, Worker, WorkerMetrics
from app.runtime import Runtime
from app.worker import WorkerConfigurationError, backends_from
from tests import cast
from tests.conftest import METRICS_HEADERS, SettingsFactory
from tests.messaging import (
    TOKYO,
    clock_at,
    in_runtime,
    message,
    messages,
    send,
    set_customer,
    tokyo,
    with_purpose,
)
from tests.peers import SmsGateway, SmtpSink, self_signed
from tests.world import Registered, register_customer

Headers = dict[str, str]
AsMember = Callable[..., Headers]

SENDER = "info@shop.example.jp"
SENDER_ID = "SHOPVAULT"
TOKEN = "gateway-token-for-tests-0123456789"
REASON = "通信障害に関する重要なお知らせのため"


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(message_daily_cap=100)


@pytest.fixture
def customer(client: TestClient, as_member: AsMember) -> Registered:
    return register_customer(
        client,
        as_member(cast.SALES),
        seed=41,
        consents={"marketing_email": True, "marketing_sms": True},
    )


@pytest.fixture
def sales(as_member: AsMember, customer: Registered) -> Headers:
    return with_purpose(as_member(cast.SALES), "support", visit=customer.visit_id)


@pytest.fixture
def day() -> datetime:
    """10:00 in Japan, within a day from now: every time in a test is reckoned from it."""
    return tokyo(0, 10)


@pytest.fixture
def gateway() -> Iterator[SmsGateway]:
    with SmsGateway() as server:
        yield server


def queue(
    client: TestClient,
    headers: Headers,
    customer: Registered,
    at: datetime,
    *templates: str,
    channel: str = "sms",
) -> list[str]:
    """Send through the API at ``at``; the ids, in order."""
    ids = []
    with clock_at(client, at):
        for template in templates:
            response = send(client, headers, customer.id, template, channel)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    return ids


Backends = Callable[[], tuple[MailBackend, SmsBackend]]


def deliver(
    settings: Settings,
    backends: Backends,
    now: datetime,
    *,
    policy: OutboxPolicy | None = None,
    metrics: WorkerMetrics | None = None,
) -> int:
    """One ``run_once`` of a fresh worker at ``now``; the number of messages it handled."""

    async def work(runtime: Runtime) -> int:
        mail, sms = backends()
        worker = Worker(runtime, mail=mail, sms=sms, policy=policy, metrics=metrics)
        try:
            return await worker.run_once(now)
        finally:
            await worker.aclose()

    return in_runtime(settings, work)


def gateway_backends(gateway: SmsGateway, tmp_path: Path, timeout: float = 10.0) -> Backends:
    def build() -> tuple[MailBackend, SmsBackend]:
        return (
            FileMail(tmp_path / "mail", SENDER),
            HttpSms(url=gateway.url, token=TOKEN, sender_id=SENDER_ID, timeout=timeout),
        )

    return build


def file_backends(tmp_path: Path) -> Backends:
    return lambda: (FileMail(tmp_path / "mail", SENDER), FileSms(tmp_path / "sms", SENDER_ID))


# --- email over SMTP ----------------------------------------------------------------------------


def test_email_is_delivered_over_smtp_from_the_official_sender(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    (message_id,) = queue(client, sales, customer, day, "repair_ready", channel="email")
    sent_at = day + timedelta(minutes=5)
    with SmtpSink() as smtp:

        def backends() -> tuple[MailBackend, SmsBackend]:
            mail = SmtpMail(
                host="127.0.0.1",
                port=smtp.port,
                sender=SENDER,
                starttls=False,
                username=None,
                password=None,
            )
            return mail, FileSms(tmp_path / "sms", SENDER_ID)

        assert deliver(settings, backends, sent_at) == 1

    (received,) = smtp.received
    assert received.mail_from == SENDER
    assert received.rcpt_tos == [customer.body["email"]]
    email = received.message
    assert email["From"] == SENDER
    assert email["To"] == customer.body["email"]
    assert email["Subject"] == "修理完了のお知らせ（渋谷店）"
    assert email["Message-ID"] == f"<{message_id}@shop.example.jp>"
    assert email["Date"] is not None
    assert email.get_content_charset() == "utf-8"
    body = email.get_content()
    assert "お預かりしているGalaxy S24の修理が完了しました。" in body
    stored = message(db, message_id)
    assert (stored.status, stored.attempts, stored.sent_at) == ("sent", 1, sent_at)
    assert stored.claimed_by is None

    status = client.get(f"/messages/{message_id}", headers=sales).json()
    assert status["status"] == "sent"


def test_an_smtp_server_that_is_down_gets_the_message_once_it_is_back(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    """Down: the message stays queued and is retried after its back-off, never lost; back up:
    delivered exactly once, and later runs send nothing more."""
    (message_id,) = queue(client, sales, customer, day, "repair_ready", channel="email")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    server = {"port": dead_port}

    def backends() -> tuple[MailBackend, SmsBackend]:
        mail = SmtpMail(
            host="127.0.0.1",
            port=server["port"],
            sender=SENDER,
            starttls=False,
            username=None,
            password=None,
        )
        return mail, FileSms(tmp_path / "sms", SENDER_ID)

    now = day + timedelta(minutes=1)
    for attempt in (1, 2):
        assert deliver(settings, backends, now) == 1
        stored = message(db, message_id)
        assert (stored.status, stored.attempts) == ("queued", attempt)
        assert stored.failure_reason == "smtp_unavailable"
        assert stored.due_at > now
        now = stored.due_at
    with SmtpSink() as smtp:
        server["port"] = smtp.port
        assert deliver(settings, backends, now) == 1
        for later in (now + timedelta(minutes=5), now + timedelta(days=1)):
            assert deliver(settings, backends, later) == 0
    assert len(smtp.received) == 1
    assert smtp.received[0].message["Message-ID"] == f"<{message_id}@shop.example.jp>"
    stored = message(db, message_id)
    assert (stored.status, stored.attempts) == ("sent", 3)


def test_starttls_and_login_when_configured(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    (message_id,) = queue(client, sales, customer, day, "appointment_change", channel="email")
    tls = self_signed(tmp_path)
    with SmtpSink(tls=tls, credentials=("shopvault", "smtp-password")) as smtp:

        def backends() -> tuple[MailBackend, SmsBackend]:
            mail = SmtpMail(
                host="127.0.0.1",
                port=smtp.port,
                sender=SENDER,
                starttls=True,
                username="shopvault",
                password="smtp-password",
                tls_context=tls.client_context(),
            )
            return mail, FileSms(tmp_path / "sms", SENDER_ID)

        assert deliver(settings, backends, day + timedelta(minutes=1)) == 1

    (received,) = smtp.received
    assert received.tls is True
    assert received.authenticated_as == "shopvault"
    assert message(db, message_id).status == "sent"


def test_an_smtp_server_that_refuses_plain_text_gets_nothing_without_starttls(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    (message_id,) = queue(client, sales, customer, day, "appointment_change", channel="email")
    tls = self_signed(tmp_path)
    now = day + timedelta(minutes=1)
    with SmtpSink(tls=tls) as smtp:

        def backends() -> tuple[MailBackend, SmsBackend]:
            mail = SmtpMail(
                host="127.0.0.1",
                port=smtp.port,
                sender=SENDER,
                starttls=False,
                username=None,
                password=None,
            )
            return mail, FileSms(tmp_path / "sms", SENDER_ID)

        deliver(settings, backends, now)
    assert smtp.received == []
    stored = message(db, message_id)
    # "530 Must issue a STARTTLS command first": a 5xx answer is final.
    assert (stored.status, stored.failure_reason) == ("failed", "smtp_530")


# --- SMS through the gateway --------------------------------------------------------------------


def test_sms_goes_to_the_gateway_with_the_bearer_token_and_sender_id(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    gateway: SmsGateway,
    tmp_path: Path,
    day: datetime,
) -> None:
    (message_id,) = queue(client, sales, customer, day, "repair_ready")
    assert deliver(settings, gateway_backends(gateway, tmp_path), day + timedelta(minutes=1)) == 1

    (request,) = gateway.requests
    assert request.path == "/send"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert set(request.body) == {"to", "from", "body", "reference"}
    assert request.body["from"] == SENDER_ID
    assert request.body["reference"] == message_id
    national = customer.body["phone"].replace("-", "")
    assert request.body["to"] == "+81" + national[1:]
    assert request.body["body"].startswith("【渋谷店】お預かりしているGalaxy S24の修理が完了")
    stored = message(db, message_id)
    assert (stored.status, stored.provider_reference) == ("sent", "gw-1")


def test_a_failing_gateway_is_retried_with_back_off_then_the_message_fails(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    (message_id,) = queue(client, sales, customer, day, "repair_ready")
    policy = OutboxPolicy(max_attempts=4)
    metrics = WorkerMetrics()
    now = day + timedelta(minutes=1)
    with SmsGateway(default="error") as gateway:
        backends = gateway_backends(gateway, tmp_path)
        waits = []
        for attempt in range(1, 5):
            assert deliver(settings, backends, now, policy=policy, metrics=metrics) == 1
            assert len(gateway.requests) == attempt
            stored = message(db, message_id)
            if attempt < 4:
                assert (stored.status, stored.attempts) == ("queued", attempt)
                assert stored.failure_reason == "gateway_500"
                wait = stored.due_at - now
                waits.append(wait)
                # Not due a moment before its time: nothing is sent.
                assert deliver(settings, backends, stored.due_at - timedelta(seconds=1)) == 0
                now = stored.due_at
        assert waits == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120)]
    stored = message(db, message_id)
    assert (stored.status, stored.attempts, stored.failure_reason) == ("failed", 4, "gateway_500")
    assert deliver(settings, backends, now + timedelta(days=1)) == 0
    assert metrics.retries.labels("sms")._value.get() == 3
    assert metrics.deliveries.labels("sms", "failed")._value.get() == 1
    status = client.get(f"/messages/{message_id}", headers=sales).json()
    assert (status["status"], status["failure_reason"]) == ("failed", "gateway_500")


def test_a_gateway_that_times_out_is_retried(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    (message_id,) = queue(client, sales, customer, day, "repair_ready")
    now = day + timedelta(minutes=1)
    with SmsGateway(script=["stall"]) as gateway:
        backends = gateway_backends(gateway, tmp_path, timeout=0.2)
        deliver(settings, backends, now)
        stored = message(db, message_id)
        assert (stored.status, stored.failure_reason) == ("queued", "gateway_timeout")
        deliver(settings, backends, stored.due_at)
    assert message(db, message_id).status == "sent"
    assert [r.body["reference"] for r in gateway.requests] == [message_id, message_id]


@pytest.mark.parametrize(
    ("answer", "reason"), [("reject", "gateway_400"), ("redirect", "gateway_redirect")]
)
def test_a_refusing_or_redirecting_gateway_fails_the_message_at_once(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    answer: str,
    reason: str,
    day: datetime,
) -> None:
    (message_id,) = queue(client, sales, customer, day, "repair_ready")
    with SmsGateway(default=answer) as gateway:
        deliver(settings, gateway_backends(gateway, tmp_path), day + timedelta(minutes=1))
    # The redirect was not followed: the gateway saw one request, to /send.
    assert [r.path for r in gateway.requests] == ["/send"]
    stored = message(db, message_id)
    assert (stored.status, stored.failure_reason, stored.attempts) == ("failed", reason, 1)


# --- rules checked again at send time -----------------------------------------------------------


def test_an_opt_out_stops_marketing_already_scheduled(
    client: TestClient,
    settings: Settings,
    as_member: AsMember,
    db: Engine,
    customer: Registered,
    gateway: SmsGateway,
    tmp_path: Path,
) -> None:
    manager = with_purpose(as_member(cast.MANAGER), "support", reason=REASON)
    night = tokyo(0, 22)
    (campaign,) = queue(client, manager, customer, night, "campaign")
    (support,) = queue(client, manager, customer, night, "repair_ready")
    assert message(db, campaign).status == "scheduled"
    # The customer opts out by SMS (a correction of consents, during a visit).
    contract = with_purpose(as_member(cast.SALES), "contract", visit=customer.visit_id)
    response = client.patch(
        f"/customers/{customer.id}", json={"consents": {"marketing_sms": False}}, headers=contract
    )
    assert response.status_code == 200, response.text

    morning = tokyo(0, 8, 0, after=night)
    assert deliver(settings, gateway_backends(gateway, tmp_path), morning) == 2
    stored = message(db, campaign)
    assert (stored.status, stored.failure_reason) == ("failed", "consent_withdrawn")
    assert [r.body["reference"] for r in gateway.requests] == [support]


def test_nothing_but_urgent_notices_leaves_in_the_quiet_hours(
    client: TestClient,
    settings: Settings,
    as_member: AsMember,
    db: Engine,
    customer: Registered,
    sales: Headers,
    gateway: SmsGateway,
    tmp_path: Path,
) -> None:
    evening = tokyo(0, 20, 59)
    (queued,) = queue(client, sales, customer, evening, "repair_ready")
    manager = with_purpose(as_member(cast.MANAGER), "support", reason=REASON)
    night = evening + timedelta(minutes=31)
    (urgent,) = queue(client, manager, customer, night, "service_outage")
    backends = gateway_backends(gateway, tmp_path)
    # The worker gets to the message queued at 20:59 only after 21:00.
    assert deliver(settings, backends, night) == 2
    assert [r.body["reference"] for r in gateway.requests] == [urgent]
    deferred = message(db, queued)
    assert deferred.status == "scheduled"
    assert deferred.due_at.astimezone(TOKYO).hour == 8
    assert deliver(settings, backends, deferred.due_at) == 1
    assert message(db, queued).status == "sent"


def test_suspension_after_queueing_stops_all_but_urgent(
    client: TestClient,
    settings: Settings,
    as_member: AsMember,
    db: Engine,
    customer: Registered,
    sales: Headers,
    gateway: SmsGateway,
    tmp_path: Path,
    day: datetime,
) -> None:
    (ordinary,) = queue(client, sales, customer, day, "repair_ready")
    manager = with_purpose(as_member(cast.MANAGER), "support", reason=REASON)
    (urgent,) = queue(client, manager, customer, day, "store_closure")
    set_customer(db, customer.id, state="suspended")
    deliver(settings, gateway_backends(gateway, tmp_path), day + timedelta(minutes=1))
    assert message(db, ordinary).failure_reason == "customer_suspended"
    assert [r.body["reference"] for r in gateway.requests] == [urgent]


# --- batches: one SMTP connection, one transaction -----------------------------------------------


def smtp_backends(smtp: SmtpSink, tmp_path: Path) -> Backends:
    def build() -> tuple[MailBackend, SmsBackend]:
        mail = SmtpMail(
            host="127.0.0.1",
            port=smtp.port,
            sender=SENDER,
            starttls=False,
            username=None,
            password=None,
        )
        return mail, FileSms(tmp_path / "sms", SENDER_ID)

    return build


def message_ids(ids: list[str]) -> list[str]:
    return sorted(f"<{i}@shop.example.jp>" for i in ids)


def test_batches_go_out_over_one_smtp_connection_each_message_once(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    ids = queue(client, sales, customer, day, *(["repair_ready"] * 12), channel="email")
    metrics = WorkerMetrics()
    sent_at = day + timedelta(minutes=1)
    with SmtpSink() as smtp:
        backends = smtp_backends(smtp, tmp_path)
        handled = deliver(
            settings, backends, sent_at, policy=OutboxPolicy(batch=5), metrics=metrics
        )
        assert handled == 12
        assert deliver(settings, backends, sent_at + timedelta(days=1)) == 0
    assert smtp.connections == 1  # three batches, one connection
    assert sorted(smtp.message_ids()) == message_ids(ids)
    stored = [message(db, i) for i in ids]
    assert {(m.status, m.attempts, m.sent_at, m.claimed_by) for m in stored} == {
        ("sent", 1, sent_at, None)
    }
    assert all(m.provider_reference == f"<{m.id}@shop.example.jp>" for m in stored)
    assert metrics.deliveries.labels("email", "sent")._value.get() == 12


def test_a_connection_dropped_mid_batch_loses_nothing_and_sends_nothing_twice(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    """The server goes away during the third email's DATA: that one is retried after its
    back-off, the rest of the batch goes out over a new connection, and every email arrives
    once."""
    ids = queue(client, sales, customer, day, *(["repair_ready"] * 6), channel="email")
    now = day + timedelta(minutes=1)
    with SmtpSink(drop={3}) as smtp:
        backends = smtp_backends(smtp, tmp_path)
        assert deliver(settings, backends, now, policy=OutboxPolicy(batch=6)) == 6
        assert smtp.connections == 2
        stored = [message(db, i) for i in ids]
        (dropped,) = (m for m in stored if m.status != "sent")
        assert (dropped.status, dropped.attempts) == ("queued", 1)
        assert dropped.failure_reason == "smtp_unavailable"
        assert dropped.claimed_by is None and dropped.due_at > now
        assert len(smtp.received) == 5
        assert deliver(settings, backends, dropped.due_at) == 1
        assert deliver(settings, backends, dropped.due_at + timedelta(days=1)) == 0
    assert sorted(smtp.message_ids()) == message_ids(ids)
    assert {message(db, i).status for i in ids} == {"sent"}
    assert (message(db, dropped.id).attempts, message(db, dropped.id).failure_reason) == (2, None)


def test_a_worker_killed_mid_batch_loses_nothing(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    """Killed after handing two emails of its batch over, before recording them: the batch
    stays claimed until the lease ends, then every message is delivered. The two handed over
    are sent again (with the same Message-ID, for the receiving side to recognise) — the window
    of recording a batch at once — and nothing else is."""
    ids = queue(client, sales, customer, day, *(["repair_ready"] * 5), channel="email")
    now = day + timedelta(minutes=1)
    policy = OutboxPolicy(batch=5, lease=timedelta(minutes=5))

    class KilledMidBatch(SmtpMail):
        async def send_many(
            self, emails: Sequence[OutgoingEmail], stop: Callable[[], bool] = lambda: False
        ) -> list[SendResult]:
            await super().send_many(emails[:2], stop)
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after this runs

    with SmtpSink() as smtp:

        def dying() -> tuple[MailBackend, SmsBackend]:
            mail = KilledMidBatch(
                host="127.0.0.1",
                port=smtp.port,
                sender=SENDER,
                starttls=False,
                username=None,
                password=None,
            )
            return mail, FileSms(tmp_path / "sms", SENDER_ID)

        with pytest.raises(KeyboardInterrupt):
            deliver(settings, dying, now, policy=policy)
        assert len(smtp.received) == 2
        assert {message(db, i).status for i in ids} == {"queued"}
        backends = smtp_backends(smtp, tmp_path)
        assert deliver(settings, backends, now + timedelta(minutes=4), policy=policy) == 0
        assert deliver(settings, backends, now + timedelta(minutes=5), policy=policy) == 5
        assert deliver(settings, backends, now + timedelta(minutes=20), policy=policy) == 0
    received = smtp.message_ids()
    assert sorted(set(received)) == message_ids(ids)  # none lost
    assert len(received) == 7  # the two handed over before the kill, twice; the rest once
    assert {message(db, i).status for i in ids} == {"sent"}


def test_stopping_mid_batch_finishes_the_email_in_hand_and_gives_back_the_rest(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    ids = queue(client, sales, customer, day, *(["repair_ready"] * 4), channel="email")
    now = day + timedelta(minutes=1)
    workers: list[tuple[Worker, asyncio.AbstractEventLoop]] = []

    def stop_on_second(ordinal: int) -> None:
        if ordinal != 2:
            return
        worker, loop = workers[0]
        told = threading.Event()

        def stop() -> None:
            worker.request_stop()
            told.set()

        loop.call_soon_threadsafe(stop)
        assert told.wait(10)

    with SmtpSink(on_data=stop_on_second) as smtp:

        async def work(runtime: Runtime) -> int:
            mail, sms = smtp_backends(smtp, tmp_path)()
            worker = Worker(runtime, mail=mail, sms=sms, policy=OutboxPolicy(batch=4))
            workers.append((worker, asyncio.get_running_loop()))
            try:
                return await worker.run_once(now)
            finally:
                await worker.aclose()

        assert in_runtime(settings, work) == 2
    stored = [message(db, i) for i in ids]
    assert sorted(m.status for m in stored) == ["queued", "queued", "sent", "sent"]
    assert all(m.claimed_by is None and m.claim_expires_at is None for m in stored)
    assert sorted(smtp.message_ids()) == message_ids([m.id for m in stored if m.status == "sent"])


def test_two_workers_with_batches_over_smtp_never_send_an_email_twice(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    ids = queue(client, sales, customer, day, *(["repair_ready"] * 40), channel="email")
    now = day + timedelta(minutes=1)
    with SmtpSink() as smtp:

        async def both(_runtime: Runtime) -> list[int]:
            runtimes = [Runtime.build(settings), Runtime.build(settings)]
            workers = []
            for i, runtime in enumerate(runtimes):
                mail, sms = smtp_backends(smtp, tmp_path)()
                workers.append(
                    Worker(
                        runtime,
                        mail=mail,
                        sms=sms,
                        policy=OutboxPolicy(batch=4),
                        name=f"worker-{i}",
                    )
                )
            try:
                return list(await asyncio.gather(*(w.run_once(now) for w in workers)))
            finally:
                for worker, runtime in zip(workers, runtimes, strict=True):
                    await worker.aclose()
                    await runtime.engine.dispose()

        handled = in_runtime(settings, both)
    assert sorted(smtp.message_ids()) == message_ids(ids)  # every email, each exactly once
    assert sum(handled) == 40
    assert all(count > 0 for count in handled), handled
    assert smtp.connections == 2  # one each
    assert {m.status for m in messages(db, customer.id)} == {"sent"}


# --- several workers ----------------------------------------------------------------------------


def test_two_workers_never_send_a_message_twice(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    gateway: SmsGateway,
    tmp_path: Path,
    day: datetime,
) -> None:
    ids = queue(client, sales, customer, day, *(["repair_ready"] * 30))
    now = day + timedelta(minutes=1)

    async def both(_runtime: Runtime) -> list[int]:
        runtimes = [Runtime.build(settings), Runtime.build(settings)]
        workers = [
            Worker(
                runtime,
                mail=FileMail(tmp_path / "mail", SENDER),
                sms=HttpSms(url=gateway.url, token=TOKEN, sender_id=SENDER_ID),
                policy=OutboxPolicy(batch=2),
                name=f"worker-{i}",
            )
            for i, runtime in enumerate(runtimes)
        ]
        try:
            return list(await asyncio.gather(*(w.run_once(now) for w in workers)))
        finally:
            for worker, runtime in zip(workers, runtimes, strict=True):
                await worker.aclose()
                await runtime.engine.dispose()

    handled = in_runtime(settings, both)
    references = list(gateway.sent_references())
    assert sorted(references) == sorted(ids)  # every message, each exactly once
    assert sum(handled) == 30
    assert all(count > 0 for count in handled), handled  # both took part
    assert {m.status for m in messages(db, customer.id)} == {"sent"}


def test_an_expired_claim_is_taken_over_once(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    gateway: SmsGateway,
    tmp_path: Path,
    day: datetime,
) -> None:
    (message_id,) = queue(client, sales, customer, day, "repair_ready")
    now = day + timedelta(minutes=1)
    policy = OutboxPolicy(lease=timedelta(minutes=5))

    async def crashed_worker(runtime: Runtime) -> int:
        worker = Worker(
            runtime,
            mail=FileMail(tmp_path, SENDER),
            sms=FileSms(tmp_path, SENDER_ID),
            policy=policy,
            name="crashed",
        )
        return len(await worker.claim(now))  # and then it dies, mid-delivery

    assert in_runtime(settings, crashed_worker) == 1
    backends = gateway_backends(gateway, tmp_path)
    assert deliver(settings, backends, now + timedelta(minutes=4), policy=policy) == 0
    assert gateway.requests == []
    assert deliver(settings, backends, now + timedelta(minutes=5), policy=policy) == 1
    assert deliver(settings, backends, now + timedelta(minutes=20), policy=policy) == 0
    assert [r.body["reference"] for r in gateway.requests] == [message_id]
    assert message(db, message_id).status == "sent"


def test_stopping_finishes_the_message_in_hand_and_gives_back_the_rest(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    ids = queue(client, sales, customer, day, "repair_ready", "repair_ready", "repair_ready")
    now = day + timedelta(minutes=1)

    class Blocking(FileSms):
        """Delivers, after the worker was told to stop while this was in hand."""

        worker: Worker

        async def send(self, sms: OutgoingSms) -> str | None:
            self.worker.request_stop()
            await asyncio.sleep(0)
            return await super().send(sms)

    async def work(runtime: Runtime) -> int:
        sms = Blocking(tmp_path / "sms", SENDER_ID)
        worker = Worker(runtime, mail=FileMail(tmp_path, SENDER), sms=sms, name="stopping")
        sms.worker = worker
        return await worker.run_once(now)

    assert in_runtime(settings, work) == 1
    stored = [message(db, i) for i in ids]
    assert sorted(m.status for m in stored) == ["queued", "queued", "sent"]
    assert all(m.claimed_by is None and m.claim_expires_at is None for m in stored)
    (sent,) = (m.id for m in stored if m.status == "sent")
    assert os.listdir(tmp_path / "sms") == [f"{sent}.json"]


def test_sigterm_stops_the_worker_process_cleanly(settings: Settings, tmp_path: Path) -> None:
    environment = {
        **os.environ,
        "SHOPVAULT_DATA_DIR": str(settings.data_dir),
        "SHOPVAULT_DATABASE_URL": settings.resolved_database_url,
        "SHOPVAULT_JWT_KEY": settings.jwt_key.get_secret_value(),  # type: ignore[union-attr]
        "SHOPVAULT_MASTER_KEY": settings.master_key.get_secret_value(),  # type: ignore[union-attr]
        "SHOPVAULT_INDEX_KEY": settings.index_key.get_secret_value(),  # type: ignore[union-attr]
    }
    environment.pop("SHOPVAULT_EMAIL_SENDER", None)
    environment.pop("SHOPVAULT_SMS_GATEWAY_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--poll", "0.2"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "started" in line:
                break
        assert any("SHOPVAULT_EMAIL_SENDER is not set" in line for line in lines), lines
        assert any("SHOPVAULT_SMS_GATEWAY_URL is not set" in line for line in lines), lines
        process.send_signal(signal.SIGTERM)
        remaining, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "stopped" in remaining


# --- without SMTP or a gateway: files -----------------------------------------------------------


def test_without_a_sender_or_gateway_messages_are_written_to_files(
    client: TestClient,
    settings: Settings,
    db: Engine,
    customer: Registered,
    sales: Headers,
    day: datetime,
) -> None:
    (sms_id,) = queue(client, sales, customer, day, "repair_ready")
    (mail_id,) = queue(client, sales, customer, day, "repair_ready", channel="email")
    chosen = backends_from(settings)
    assert isinstance(chosen.mail, FileMail) and isinstance(chosen.sms, FileSms)
    assert len(chosen.notes) == 2

    assert deliver(settings, lambda: (chosen.mail, chosen.sms), day + timedelta(minutes=1)) == 2

    outbox = settings.data_dir / "outbox"
    sms_file = outbox / "sms" / f"{sms_id}.json"
    payload = json.loads(sms_file.read_text(encoding="utf-8"))
    assert payload["reference"] == sms_id
    assert payload["to"].startswith("+81")
    assert "修理が完了しました" in payload["body"]
    eml = (outbox / "mail" / f"{mail_id}.eml").read_bytes()
    assert customer.body["email"].encode() in eml
    for path in (sms_file, outbox / "mail" / f"{mail_id}.eml"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {message(db, i).status for i in (sms_id, mail_id)} == {"sent"}


def test_a_gateway_needs_its_token_and_sender_id(make_settings: SettingsFactory) -> None:
    with pytest.raises(WorkerConfigurationError) as refused:
        backends_from(make_settings(sms_gateway_url="http://127.0.0.1:9/send"))
    assert "SHOPVAULT_SMS_GATEWAY_TOKEN" in str(refused.value)
    chosen = backends_from(
        make_settings(
            sms_gateway_url="http://127.0.0.1:9/send",
            sms_gateway_token=TOKEN,
            sms_sender_id=SENDER_ID,
            email_sender=SENDER,
        )
    )
    assert isinstance(chosen.sms, HttpSms) and isinstance(chosen.mail, SmtpMail)
    assert chosen.notes == ()
    asyncio.run(chosen.sms.aclose())


# --- metrics ------------------------------------------------------------------------------------


def test_outbox_gauges_on_metrics(
    client: TestClient,
    settings: Settings,
    customer: Registered,
    sales: Headers,
    tmp_path: Path,
    day: datetime,
) -> None:
    queue(client, sales, customer, day, "repair_ready", "repair_ready")
    deliver(settings, file_backends(tmp_path), day + timedelta(minutes=1))
    queue(client, sales, customer, day + timedelta(hours=12), "repair_ready")  # 22:00
    text = client.get("/metrics", headers=METRICS_HEADERS).text
    assert 'shopvault_outbox_messages{channel="sms",kind="message",status="sent"} 2.0' in text
    assert 'shopvault_outbox_messages{channel="sms",kind="message",status="scheduled"} 1.0' in text
    assert customer.id not in text
