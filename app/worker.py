"""``shopvault worker``: the outbox worker as a process.

Which way messages leave is decided by the settings, and said at start:

- email goes over SMTP (``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_STARTTLS``, ``SMTP_USERNAME``,
  ``SMTP_PASSWORD``) once ``EMAIL_SENDER`` is set — the official address is what makes email
  sendable, and ``SMTP_HOST`` has a default (``localhost``) that cannot tell "configured" from
  "not"; without a sender, each email is written to ``<DATA_DIR>/outbox/mail/<id>.eml``;
- SMS goes through the gateway once ``SMS_GATEWAY_URL`` is set (then ``SMS_GATEWAY_TOKEN`` and
  ``SMS_SENDER_ID`` are required too); without it, each SMS is written to
  ``<DATA_DIR>/outbox/sms/<id>.json``.

SIGTERM or SIGINT: the message in hand is finished, what the batch sent is recorded, the rest of
it is given back, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from dataclasses import dataclass

from prometheus_client import start_http_server

from app.config import Settings
from app.messages.delivery import FileMail, FileSms, HttpSms, MailBackend, SmsBackend, SmtpMail
from app.messages.outbox import Worker, WorkerMetrics
from app.request_context import request_id_var
from app.runtime import Runtime

log = logging.getLogger("shopvault.worker")


class WorkerConfigurationError(ValueError):
    """The delivery settings are incomplete (named, never their values)."""


@dataclass(frozen=True, slots=True)
class Backends:
    mail: MailBackend
    sms: SmsBackend
    notes: tuple[str, ...]  # what to tell the operator at start


def outbox_directory(settings: Settings) -> str:
    return str(settings.data_dir / "outbox")


def backends_from(settings: Settings) -> Backends:
    notes: list[str] = []
    mail: MailBackend
    sms: SmsBackend
    if settings.email_sender:
        mail = SmtpMail(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.email_sender,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        )
    else:
        mail = FileMail(settings.data_dir / "outbox" / "mail", None)
        notes.append(f"SHOPVAULT_EMAIL_SENDER is not set: {mail.description} (not sent to anyone)")
    if settings.sms_gateway_url:
        missing = [
            name
            for name, value in (
                ("SHOPVAULT_SMS_GATEWAY_TOKEN", settings.sms_gateway_token),
                ("SHOPVAULT_SMS_SENDER_ID", settings.sms_sender_id),
            )
            if not value
        ]
        if missing:
            raise WorkerConfigurationError(
                "SHOPVAULT_SMS_GATEWAY_URL is set, so " + " and ".join(missing) + " must be too"
            )
        assert settings.sms_gateway_token is not None and settings.sms_sender_id is not None
        sms = HttpSms(
            url=settings.sms_gateway_url,
            token=settings.sms_gateway_token.get_secret_value(),
            sender_id=settings.sms_sender_id,
        )
    else:
        sms = FileSms(settings.data_dir / "outbox" / "sms", settings.sms_sender_id)
        notes.append(
            f"SHOPVAULT_SMS_GATEWAY_URL is not set: {sms.description} (not sent to anyone)"
        )
    return Backends(mail, sms, tuple(notes))


async def run_worker(
    settings: Settings,
    *,
    once: bool,
    poll_interval: float = 1.0,
    metrics_port: int | None = None,
) -> int:
    backends = backends_from(settings)
    runtime = Runtime.build(settings)
    metrics = WorkerMetrics()
    worker = Worker(runtime, mail=backends.mail, sms=backends.sms, metrics=metrics)
    request_id_var.set(f"worker-{uuid.uuid4()}")
    for channel in (backends.mail, backends.sms):
        log.info("worker delivery", extra={"delivery": channel.description})
    for note in backends.notes:
        log.warning(note, extra={"delivery": "files"})
        print(f"shopvault worker: {note}", flush=True)
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
    try:
        if once:
            handled = await worker.run_once()
            print(f"shopvault worker: {handled} message(s) handled.", flush=True)
            return 0
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.request_stop)
        log.info("worker started", extra={"worker": worker.name})
        print("shopvault worker: started; SIGTERM or Ctrl-C stops it.", flush=True)
        await worker.run(poll_interval)
        log.info("worker stopped", extra={"worker": worker.name})
        print("shopvault worker: stopped.", flush=True)
        return 0
    finally:
        await worker.aclose()
        await runtime.engine.dispose()
