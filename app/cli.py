"""The ``shopvault`` command: ``migrate``, ``create-admin``, ``create-auditor``, ``serve``,
``demo``, ``worker``, ``keys rotate``, ``audit verify|export``, ``purge [--dry-run]``.

Writes go through the same code paths as the API: the request engine from ``Runtime``, one
``UnitOfWork`` per command, and an ``admin`` access event by the ``cli`` actor committed together
with the data. Refusals print one line on stderr, never a traceback: exit 1 for a refused
command or an unreachable database, exit 2 for a configuration problem.

Each command imports what it needs when it runs, so that ``shopvault migrate`` (run at every
container start) and ``--help`` do not load the whole web application.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from app.audit.events import Action, Actor, EventDraft
from app.config import Settings
from app.db import async_url, is_sqlite, sync_url
from app.errors import AuditUnavailable, ValidationFailed
from app.keys import KeyError_, load_keys
from app.logs import configure_logging
from app.request_context import request_id_var
from app.roles import Role

if TYPE_CHECKING:
    from app.demo import DemoAccounts
    from app.key_rotation import KeyUsage, RotationReport
    from app.keyring import MasterKeyRing, RingEditor, RingFile
    from app.keys import Keys
    from app.runtime import Runtime
    from app.uow import UnitOfWork

EXIT_REFUSED = 1
EXIT_CONFIGURATION = 2

# Who the access log names for what the command line does (it has no token to name).
CLI_ACTOR = Actor(name="cli", id=None, role=None, store=None, terminal=None)

log = logging.getLogger("shopvault.cli")

Result = TypeVar("Result")


class CommandRefused(Exception):
    """Reported as one line on stderr; exit 1."""


class ConfigurationError(Exception):
    """Reported as one line on stderr; exit 2."""


# --- settings -----------------------------------------------------------------------------------


def _check_database_url(name: str, url: str) -> None:
    try:
        sync_url(url)
        async_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(
            f"SHOPVAULT_{name} is not a usable database URL "
            "(sqlite:///path/to/file.db or postgresql://user@host:port/db)"
        ) from exc


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        # Name the setting and the rule; never echo the value (it may be a secret).
        problems = "; ".join(
            f"SHOPVAULT_{str(error['loc'][0]).upper()}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigurationError(problems) from exc
    _check_database_url("DATABASE_URL", settings.resolved_database_url)
    _check_database_url("MIGRATION_DATABASE_URL", settings.resolved_migration_database_url)
    return settings


def _ensure_sqlite_directory(url: str) -> None:
    database = make_url(url).database
    if is_sqlite(url) and database and database != ":memory:":
        # The data directory also holds the generated keys: the owner's alone.
        Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)


def _configure_logging(settings: Settings) -> None:
    try:
        configure_logging(settings.log_level)
    except ValueError as exc:
        raise ConfigurationError("SHOPVAULT_LOG_LEVEL is not a logging level") from exc


# --- running work in a unit of work -------------------------------------------------------------


class Transactions:
    """Runs one piece of work per unit of work on the runtime's engine, committing each."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def __call__(self, work: Callable[[UnitOfWork], Awaitable[Result]]) -> Result:
        from app.uow import UnitOfWork

        async with self._runtime.sessions() as session:
            uow = UnitOfWork(session, self._runtime.audit_log, refusals=self._runtime.refusals)
            try:
                result = await work(uow)
                await uow.commit()
            except BaseException:
                await uow.rollback()
                raise
            return result


def with_runtime(
    settings: Settings, work: Callable[[Runtime, Transactions], Awaitable[Result]]
) -> Result:
    """Run ``work`` with the request engine, the access log and a way to run transactions."""
    from app.runtime import Runtime

    runtime = Runtime.build(settings)

    async def run() -> Result:
        request_id_var.set(f"cli-{uuid.uuid4()}")
        try:
            return await work(runtime, Transactions(runtime))
        finally:
            await runtime.close()

    return asyncio.run(run())


def in_unit_of_work(
    settings: Settings, work: Callable[[UnitOfWork, Runtime], Awaitable[Result]]
) -> Result:
    """Run ``work`` in one unit of work on the request engine; commit data and events together."""

    async def once(runtime: Runtime, transact: Transactions) -> Result:
        return await transact(lambda uow: work(uow, runtime))

    return with_runtime(settings, once)


# --- migrate ------------------------------------------------------------------------------------


def migrate_command(_args: argparse.Namespace, settings: Settings) -> int:
    from app import migrate

    url = settings.resolved_migration_database_url
    _ensure_sqlite_directory(url)
    migrate.upgrade(url)
    print("shopvault: the database is at the latest revision.")
    return 0


# --- create-admin, create-auditor ---------------------------------------------------------------


def _read_password(role: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for the new {role}: ")
    return sys.stdin.readline().removesuffix("\n").removesuffix("\r")


def _check_login(login: str) -> None:
    from app.admin.schemas import Login

    try:
        TypeAdapter(Login).validate_python(login)
    except ValidationError as exc:
        raise CommandRefused(
            "a login is 3 to 64 characters: lower-case letters, digits, '.', '_' or '-'"
        ) from exc


async def _add_operator_account(
    uow: UnitOfWork, role: Role, login: str, display_name: str, password: str
) -> str:
    """An account made on the machine: effective at once (no approval), and its password is
    the operator's own choice (not temporary)."""
    from app.auth import repository as auth_repository
    from app.auth.passwords import hash_password_async
    from app.models import Staff
    from app.models.base import new_id, utcnow

    # Hashed before the transaction begins: Argon2 never runs under the database's lock.
    password_hash = await hash_password_async(password)
    taken = CommandRefused("a staff member with this login already exists")
    if await auth_repository.staff_by_login(uow.session, login) is not None:
        raise taken
    now = utcnow()
    staff = Staff(
        id=new_id(),
        login=login,
        display_name=display_name,
        role=role.value,
        store=None,
        password_hash=password_hash,
        password_expires_at=None,
        active=True,
        pending_approval=False,
        auth_epoch=0,
        created_at=now,
        updated_at=now,
    )
    uow.session.add(staff)
    try:
        await uow.session.flush()
    except IntegrityError as exc:  # created by someone else since we looked
        raise taken from exc
    uow.record(EventDraft(actor=CLI_ACTOR, action=Action.ADMIN, resource=f"staff/{staff.id}"))
    return staff.id


def _create_operator_account(role: Role, args: argparse.Namespace, settings: Settings) -> int:
    from app.auth.service import check_password_policy

    login: str = args.login
    _check_login(login)
    password = _read_password(role.value)
    try:
        check_password_policy(password, login)
    except ValidationFailed as exc:
        raise CommandRefused(exc.detail) from exc
    display_name: str = args.display_name or login
    in_unit_of_work(
        settings, lambda uow, _: _add_operator_account(uow, role, login, display_name, password)
    )
    print(f"shopvault: {role.value} {login} created.")
    return 0


def create_admin_command(args: argparse.Namespace, settings: Settings) -> int:
    return _create_operator_account(Role.ADMIN, args, settings)


def create_auditor_command(args: argparse.Namespace, settings: Settings) -> int:
    """Auditors approve admins' changes, so the API cannot make them: only an operator here."""
    return _create_operator_account(Role.AUDITOR, args, settings)


# --- serve --------------------------------------------------------------------------------------


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    from app.server import serve

    # Generate missing keys now, once: worker processes started later only read them.
    load_keys(settings)
    log.info("serving", extra={"host": args.host, "port": args.port, "workers": args.workers})
    try:
        return serve("app.main:app", host=args.host, port=args.port, workers=args.workers)
    except OSError as exc:
        raise CommandRefused(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None


# --- demo ---------------------------------------------------------------------------------------


def _print_accounts(accounts: DemoAccounts) -> None:
    print("Demo data created (synthetic). Staff accounts:")
    print(f"  {'login':<10} {'role':<11} {'store':<6} password")
    for member in accounts.staff:
        store = member.store or "-"
        print(f"  {member.login:<10} {member.role.value:<11} {store:<6} {member.password}")
    print("System clients (the secrets are shown only now; only their hashes are kept):")
    print(f"  {'client_id':<10} {'role':<15} client_secret")
    for client in accounts.clients:
        print(f"  {client.client_id:<10} {client.role.value:<15} {client.client_secret}")
    print("Synthetic customers, masked (the README says how to find them with the search):")
    for customer in accounts.customers:
        print(f"  {customer.store:<6} {customer.display_name}")


def demo_command(args: argparse.Namespace, settings: Settings) -> int:
    from app.demo import database_is_new, seed_demo

    async def work(uow: UnitOfWork, runtime: Runtime) -> DemoAccounts | None:
        if args.if_new and not await database_is_new(uow.session):
            return None
        try:
            return await seed_demo(uow, runtime, CLI_ACTOR)
        except IntegrityError as exc:
            raise CommandRefused(
                "demo stores, logins or clients already exist; nothing was added"
            ) from exc

    accounts = in_unit_of_work(settings, work)
    if accounts is None:
        print("shopvault: the database already has stores or staff; no demo data added.")
        return 0
    _print_accounts(accounts)
    return 0


# --- worker -------------------------------------------------------------------------------------


def worker_command(args: argparse.Namespace, settings: Settings) -> int:
    from app.worker import WorkerConfigurationError, run_worker

    try:
        return asyncio.run(
            run_worker(
                settings,
                once=args.once,
                poll_interval=args.poll,
                metrics_port=args.metrics_port,
            )
        )
    except WorkerConfigurationError as exc:
        raise ConfigurationError(str(exc)) from exc


# --- keys rotate --------------------------------------------------------------------------------


def keys_rotate_command(args: argparse.Namespace, settings: Settings) -> int:
    from app.keyring import RingBusy, RingFile, master_ring_source

    # Validates every key, and generates the ring on a first run, before anything else.
    keys = load_keys(settings)
    source = master_ring_source(settings)
    if isinstance(source, RingFile):
        try:
            with source.editing(wait=False) as editor:
                return _rotate_ring_file(args, settings, keys, source, editor)
        except RingBusy as exc:
            raise CommandRefused("another `shopvault keys rotate` is running") from exc
    if args.new_key_stdin:
        raise CommandRefused(
            "with SHOPVAULT_MASTER_KEY set, the new key is configured, not read from stdin "
            "(README: Rotating the master key)"
        )
    return _rotate_environment(args, settings, keys)


def _key_usage(settings: Settings) -> KeyUsage:
    from app.key_rotation import key_usage

    async def read(_runtime: Runtime, transact: Transactions) -> KeyUsage:
        return await transact(lambda uow: key_usage(uow.session))

    return with_runtime(settings, read)


def _finish(
    args: argparse.Namespace, settings: Settings, ring: MasterKeyRing, superseded: Sequence[str]
) -> RotationReport:
    from app.key_rotation import RotationError, finish_rotation

    def progress(moved: int) -> None:
        log.info("data keys re-wrapped", extra={"event": "key_rotation", "count": moved})

    async def run(runtime: Runtime, transact: Transactions) -> RotationReport:
        return await finish_rotation(
            transact,
            ring,
            superseded=superseded,
            actor=CLI_ACTOR,
            batch_size=args.batch_size,
            on_batch=progress,
            shred_keys=runtime.vault.shred_keys,
        )

    try:
        report = with_runtime(settings, run)
    except RotationError as exc:
        raise CommandRefused(str(exc)) from exc
    if report.masked:
        print(f"shopvault: {report.masked} customer data keys from before shred keys masked.")
    print(f"shopvault: {report.rewrapped} data keys re-wrapped with master key {report.target_id}.")
    return report


def _unfinished(report: RotationReport) -> None:
    problems = [
        f"master key {key_id} still wraps {count} data keys (a process still wrapping with it?); "
        "run `shopvault keys rotate` again"
        for key_id, count in report.still_used.items()
    ] + [
        f"{count} data keys are wrapped by master key {key_id}, which is not in the ring: "
        "they open only once that key is added to the ring"
        for key_id, count in report.unknown.items()
    ]
    if problems:
        raise CommandRefused("; ".join(problems))


def _new_master_key(args: argparse.Namespace) -> bytes:
    import secrets

    from app.keys import decode_key

    if args.new_key_stdin:
        return decode_key(sys.stdin.readline(), "master")
    return secrets.token_bytes(32)


def _check_new_key(new_key: bytes, keys: Keys, usage: KeyUsage) -> None:
    from app.keyring import master_key_id

    if new_key in keys.master_ring.keys:
        raise CommandRefused("the new master key is already in the ring")
    if new_key in (keys.jwt, keys.index):
        raise CommandRefused("the new master key must differ from the JWT and index keys")
    if master_key_id(new_key) in usage.retired:
        raise CommandRefused("the new master key was retired before; use a new one")


def _rotate_ring_file(
    args: argparse.Namespace,
    settings: Settings,
    keys: Keys,
    ring_file: RingFile,
    editor: RingEditor,
) -> int:
    from app.keyring import master_key_id

    ring = editor.read()
    usage = _key_usage(settings)
    if len(ring.keys) > 1:
        # An interrupted rotation: its key may already wrap data keys, so it is never replaced.
        if args.new_key_stdin and master_key_id(_new_master_key(args)) != ring.newest_id:
            raise CommandRefused(
                f"a rotation to master key {ring.newest_id} is unfinished and keeps its key: "
                "run `shopvault keys rotate` without --new-key-stdin to finish it first"
            )
        print(f"shopvault: finishing the rotation to master key {ring.newest_id}.")
    else:
        new_key = _new_master_key(args)
        _check_new_key(new_key, keys, usage)
        ring = ring.with_newest(new_key)
        editor.write(ring)  # durably in the ring before anything is wrapped with it
        print(
            f"shopvault: master key {ring.newest_id} added to {ring_file.path}; running "
            "processes wrap with it from their next new data key on."
        )
    report = _finish(args, settings, ring, ring.ids[:-1])
    gone = [key_id for key_id in ring.ids if key_id in {*report.retired, *report.retired_earlier}]
    if gone:
        editor.write(ring.without(gone))
        print(f"shopvault: retired and removed from {ring_file.path}: {', '.join(gone)}.")
    _unfinished(report)
    return 0


def _rotate_environment(args: argparse.Namespace, settings: Settings, keys: Keys) -> int:
    from app.keyring import OTHER_KEYS_SETTING, master_key_id
    from app.keys import encode_key

    ring = keys.master_ring
    usage = _key_usage(settings)
    if ring.newest_id in usage.retired:
        raise CommandRefused(
            f"SHOPVAULT_MASTER_KEY (master key {ring.newest_id}) is retired; configure a new key"
        )
    others = ring.ids[:-1]
    moving = [k for k in others if usage.rows.get(k) and k not in usage.retired]
    if moving or usage.superseded - {ring.newest_id}:
        report = _finish(args, settings, ring, moving)
        gone = [k for k in others if k in {*report.retired, *report.retired_earlier}]
        if gone:
            print(f"shopvault: retired: {', '.join(gone)}; remove them from {OTHER_KEYS_SETTING}.")
        _unfinished(report)
        return 0
    stale = [k for k in others if k in usage.retired]
    if stale:
        print(
            f"shopvault: retired already: {', '.join(stale)}; "
            f"remove them from {OTHER_KEYS_SETTING}."
        )
    idle = [k for k in others if k not in usage.retired]
    if idle:
        print(
            f"shopvault: every data key is wrapped by master key {ring.newest_id}; "
            f"{', '.join(idle)} in {OTHER_KEYS_SETTING} wraps none. If it is your next key, make "
            f"it SHOPVAULT_MASTER_KEY, move the current one to {OTHER_KEYS_SETTING}, restart "
            "every process and run `shopvault keys rotate` again; an old key can be removed."
        )
        return 0
    new_key = _new_master_key(args)
    _check_new_key(new_key, keys, usage)
    # Shown before anything is wrapped with it; nothing is, until the operator configures it.
    print(
        f"shopvault: every data key is wrapped by master key {ring.newest_id}. A new master key "
        f"(id {master_key_id(new_key)}) follows; nothing is wrapped with it yet:"
    )
    print(encode_key(new_key))
    print(
        f"Next: 1. add it to {OTHER_KEYS_SETTING} on every process and restart them; "
        f"2. make it SHOPVAULT_MASTER_KEY, move the current key to {OTHER_KEYS_SETTING}, restart "
        "them; 3. run `shopvault keys rotate` again (it re-wraps and retires the old key)."
    )
    return 0


# --- audit ------------------------------------------------------------------------------------


def audit_verify_command(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from app.audit.integrity import verify_log

    result = verify_log(settings, full=args.full)
    print(json.dumps(result.as_dict(), indent=2))
    return 0 if result.ok else EXIT_REFUSED


def audit_export_command(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from app.audit import commands
    from app.errors import ValidationFailed
    from app.models.base import utcnow

    async def work(uow: UnitOfWork, _runtime: Runtime) -> commands.Export:
        return await commands.export(
            uow,
            CLI_ACTOR,
            since=args.since,
            now=utcnow(),
            settle=timedelta(seconds=args.settle),
            limit=args.limit,
        )

    try:
        exported = in_unit_of_work(settings, work)
    except ValidationFailed as exc:
        raise CommandRefused(exc.detail) from exc
    for line in exported.lines:
        print(line)
    if exported.cursor is not None:
        print(f"shopvault: resume with --since {exported.cursor}", file=sys.stderr)
    return 0


# --- purge --------------------------------------------------------------------------------------


def _progress_bar() -> Callable[[str, int, int], None]:
    """A bar on a terminal; plain log lines otherwise (cron, containers)."""
    if not sys.stderr.isatty():

        def log_line(what: str, done: int, total: int) -> None:
            if done == total:
                log.info("purge step done", extra={"step": what, "count": total})

        return log_line

    def draw(what: str, done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done == total else ""
        bar = "#" * filled + "." * (width - filled)
        print(f"\r{what:<17} [{bar}] {done}/{total}", end=end, file=sys.stderr, flush=True)

    return draw


def purge_command(args: argparse.Namespace, settings: Settings) -> int:
    """Disposal by the retention rules; ``--dry-run`` says what would go and changes nothing."""
    from app.audit.chain import AuditKeys
    from app.audit.integrity import AuditIntegrity
    from app.audit.pruning import PruneRefused, prune_events
    from app.documents.service import StoreDue, due_by_store
    from app.models.base import utcnow
    from app.remasking import in_workers
    from app.retention.purge import WORKERS, PurgeOutcome, cutoff, purge, purge_lock
    from app.retention.rules import ACCESS_EVENT_RULE
    from app.retention.service import date_in_japan

    dry_run: bool = args.dry_run
    with purge_lock(settings.resolved_database_url) as held:
        if not held:
            print("shopvault: another purge is running; nothing was done.")
            return 0
        now = utcnow()

        workers = 1 if is_sqlite(settings.resolved_database_url) else WORKERS

        async def work(runtime: Runtime, transact: Transactions) -> PurgeOutcome:
            return await purge(
                transact,
                runtime.vault,
                CLI_ACTOR,
                now=now,
                dry_run=dry_run,
                progress=_progress_bar(),
                workers=workers,
                remasker=remasker,
            )

        # On PostgreSQL each transaction moving buckets on re-masks in a process of its own.
        with contextlib.ExitStack() as stack:
            remasker = (
                stack.enter_context(in_workers(settings, workers))
                if workers > 1 and not dry_run
                else None
            )
            outcome = with_runtime(settings, work)
        integrity = AuditIntegrity(settings, AuditKeys.derive(load_keys(settings).index))
        refused: str | None = None
        try:
            pruned = prune_events(
                settings.resolved_migration_database_url,
                integrity,
                cutoff=cutoff(outcome.today, ACCESS_EVENT_RULE.years),
                dry_run=dry_run,
            )
        except PruneRefused as exc:
            refused, pruned = str(exc), None
        finally:
            integrity.dispose()

        async def forms(uow: UnitOfWork, _runtime: Runtime) -> tuple[date, list[StoreDue]]:
            return await due_by_store(uow, now=now)

        today, stores = in_unit_of_work(settings, forms)

    verb = "would be" if dry_run else "were"
    print(f"shopvault purge on {today.isoformat()} (Asia/Tokyo){' — dry run' if dry_run else ''}:")
    print(f"  customers {verb} erased (customer.personal_data): {len(outcome.customers)}")
    for customer_id in outcome.customers:
        print(f"    customer {customer_id}")
    print(
        f"  identity records {verb} disposed of (customer.identity_record): "
        f"{len(outcome.identity_records)}"
    )
    for customer_id in outcome.identity_records:
        print(f"    customer {customer_id}")
    print(f"  visit notes {verb} cleared (visit.notes): {outcome.visit_notes}")
    print(f"  messages {verb} deleted (message): {outcome.messages}")
    if outcome.shred_buckets_advanced:
        print(
            f"  shred key buckets moved to a new key (erased keys now open nothing in older "
            f"copies): {outcome.shred_buckets_advanced}"
        )
    if outcome.shred_keys_destroyed:
        print(
            f"  old shred keys destroyed (left by an interrupted erasure): "
            f"{outcome.shred_keys_destroyed}"
        )
    if pruned is not None:
        print(
            f"  access events {verb} pruned (access_event): {pruned.events} "
            f"in {len(pruned.chains)} chains"
        )
    else:
        print(f"  access events not pruned: {refused}")
    print(f"Paper forms due for disposal on {today.isoformat()} (Asia/Tokyo), oldest first.")
    for store in stores:
        print(f"{store.code} {store.name}: {len(store.forms)} due")
        for form in store.forms:
            print(
                f"  registered {date_in_japan(form.registered_at).isoformat()}"
                f"  kept until {form.retain_until}"
                f"  {form.form_type.value:<13}  at {form.storage_location}"
                f"  customer {form.customer_id}  form {form.id}"
            )
    if dry_run:
        print("Dry run: nothing was changed.")
    return EXIT_REFUSED if refused is not None else 0


# --- the command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopvault",
        description="shopvault: customer personal-data service. Settings come from SHOPVAULT_*.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser(
        "migrate", help="upgrade the database to the latest revision (as MIGRATION_DATABASE_URL)"
    )
    migrate.set_defaults(handler=migrate_command)

    admin = commands.add_parser(
        "create-admin", help="create an admin; the password is read from stdin (first line)"
    )
    admin.add_argument("login")
    admin.add_argument("--display-name", help="shown in the admin API (default: the login)")
    admin.set_defaults(handler=create_admin_command)

    auditor = commands.add_parser(
        "create-auditor",
        help="create an auditor (approves admins' changes); the password is read from stdin",
    )
    auditor.add_argument("login")
    auditor.add_argument("--display-name", help="shown in the admin API (default: the login)")
    auditor.set_defaults(handler=create_auditor_command)

    serve = commands.add_parser("serve", help="serve the API with uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=_positive_int, default=1)
    serve.set_defaults(handler=serve_command)

    demo = commands.add_parser(
        "demo", help="create demo stores, staff and system clients, and print their credentials"
    )
    demo.add_argument(
        "--if-new",
        action="store_true",
        help="do nothing when the database already has stores or staff",
    )
    demo.set_defaults(handler=demo_command)

    worker = commands.add_parser(
        "worker", help="deliver the outbox (email over SMTP, SMS through the gateway, or files)"
    )
    worker.add_argument("--once", action="store_true", help="deliver what is due now, then exit")
    worker.add_argument(
        "--poll",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how often to look for due messages (default: 1)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve the worker's delivery counters on 127.0.0.1:PORT/metrics",
    )
    worker.set_defaults(handler=worker_command)

    keys = commands.add_parser("keys", help="key management")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    rotate = key_commands.add_parser(
        "rotate",
        help="wrap every data key with a new master key, online; run again to resume "
        "(data is untouched)",
    )
    rotate.add_argument(
        "--new-key-stdin",
        action="store_true",
        help="read the new master key (base64url of 32 random bytes) from stdin (generated keys)",
    )
    rotate.add_argument(
        "--batch-size",
        type=_positive_int,
        default=500,
        help="data keys re-wrapped per transaction (default 500)",
    )
    rotate.set_defaults(handler=keys_rotate_command)

    audit = commands.add_parser("audit", help="the access log: verify it, export it")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_commands.add_parser(
        "verify",
        help="verify the access log against its checkpoints (exit 1 when it is not whole)",
    )
    verify.add_argument(
        "--full", action="store_true", help="every event, not only since the last verification"
    )
    verify.set_defaults(handler=audit_verify_command)
    export = audit_commands.add_parser(
        "export", help="write access events as JSON lines (oldest first), for a SIEM"
    )
    export.add_argument("--since", help="the cursor printed by the previous export")
    export.add_argument(
        "--limit", type=_positive_int, default=10_000, help="at most this many events"
    )
    export.add_argument(
        "--settle",
        type=int,
        default=300,
        help="seconds an event must be old to be exported (default 300: late commits)",
    )
    export.set_defaults(handler=audit_export_command)
    purge = commands.add_parser(
        "purge",
        help="disposal by the retention rules: erase customers, clear notes, delete messages, "
        "prune old access events (as the owner), list the paper forms due",
    )
    purge.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be disposed of, and list the paper forms due; change nothing",
    )
    purge.set_defaults(handler=purge_command)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _fail(message: str, code: int) -> int:
    print(f"shopvault: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        settings = load_settings()
        _configure_logging(settings)
        return handler(args, settings)
    except (ConfigurationError, KeyError_) as exc:
        return _fail(f"configuration error: {exc}", EXIT_CONFIGURATION)
    except CommandRefused as exc:
        return _fail(str(exc), EXIT_REFUSED)
    except OSError as exc:
        if exc.filename is not None:  # the data directory or a key file, not the database
            return _fail(f"{exc.strerror or type(exc).__name__}: {exc.filename}", EXIT_REFUSED)
        return _fail(_database_error(exc), EXIT_REFUSED)
    except (SQLAlchemyError, AuditUnavailable) as exc:
        return _fail(_database_error(exc), EXIT_REFUSED)


def _database_error(exc: BaseException) -> str:
    # The error's kind only: database messages can quote the values of the statement.
    cause = exc.__cause__ if isinstance(exc, AuditUnavailable) and exc.__cause__ else exc
    return (
        f"database error ({type(cause).__name__}): is the database reachable, "
        "and migrated (shopvault migrate)?"
    )


if __name__ == "__main__":
    sys.exit(main())
