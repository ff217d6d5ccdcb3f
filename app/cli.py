"""The ``shopvault`` command: ``migrate``, ``create-admin``, ``serve``, ``demo``, ``keys rotate``,
``purge --dry-run``.

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

if TYPE_CHECKING:
    from app.demo import DemoAccounts
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


def in_unit_of_work(
    settings: Settings, work: Callable[[UnitOfWork, Runtime], Awaitable[Result]]
) -> Result:
    """Run ``work`` in one unit of work on the request engine; commit data and events together."""
    from app.runtime import Runtime
    from app.uow import UnitOfWork

    runtime = Runtime.build(settings)

    async def run() -> Result:
        request_id_var.set(f"cli-{uuid.uuid4()}")
        try:
            async with runtime.sessions() as session:
                uow = UnitOfWork(session, runtime.audit_log)
                try:
                    result = await work(uow, runtime)
                    await uow.commit()
                except BaseException:
                    await uow.rollback()
                    raise
                return result
        finally:
            await runtime.engine.dispose()

    return asyncio.run(run())


# --- migrate ------------------------------------------------------------------------------------


def migrate_command(_args: argparse.Namespace, settings: Settings) -> int:
    from app import migrate

    url = settings.resolved_migration_database_url
    _ensure_sqlite_directory(url)
    migrate.upgrade(url)
    print("shopvault: the database is at the latest revision.")
    return 0


# --- create-admin -------------------------------------------------------------------------------


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password for the new admin: ")
    return sys.stdin.readline().removesuffix("\n").removesuffix("\r")


def _check_login(login: str) -> None:
    from app.admin.schemas import Login

    try:
        TypeAdapter(Login).validate_python(login)
    except ValidationError as exc:
        raise CommandRefused(
            "a login is 3 to 64 characters: lower-case letters, digits, '.', '_' or '-'"
        ) from exc


async def _add_admin(uow: UnitOfWork, login: str, display_name: str, password: str) -> str:
    from app.auth import repository as auth_repository
    from app.auth.passwords import hash_password_async
    from app.models import Staff
    from app.models.base import new_id, utcnow
    from app.roles import Role

    taken = CommandRefused("a staff member with this login already exists")
    if await auth_repository.staff_by_login(uow.session, login) is not None:
        raise taken
    now = utcnow()
    staff = Staff(
        id=new_id(),
        login=login,
        display_name=display_name,
        role=Role.ADMIN.value,
        store=None,
        password_hash=await hash_password_async(password),
        active=True,
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


def create_admin_command(args: argparse.Namespace, settings: Settings) -> int:
    from app.auth.service import check_password_policy

    login: str = args.login
    _check_login(login)
    password = _read_password()
    try:
        check_password_policy(password, login)
    except ValidationFailed as exc:
        raise CommandRefused(exc.detail) from exc
    display_name: str = args.display_name or login
    in_unit_of_work(settings, lambda uow, _: _add_admin(uow, login, display_name, password))
    print(f"shopvault: admin {login} created.")
    return 0


# --- serve --------------------------------------------------------------------------------------


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    # Generate missing keys now, once: worker processes forked later only read them.
    load_keys(settings)
    log.info("serving", extra={"host": args.host, "port": args.port, "workers": args.workers})
    uvicorn.run(
        "app.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        # The app reads X-Forwarded-For itself, and only from SHOPVAULT_TRUSTED_PROXIES.
        proxy_headers=False,
        # The app writes its own access log line (route templates, not raw paths).
        access_log=False,
        log_config=None,
    )
    return 0


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


# --- keys rotate --------------------------------------------------------------------------------


def keys_rotate_command(args: argparse.Namespace, settings: Settings) -> int:
    import secrets

    from app.key_rotation import promote_next_key, rewrap_all, stage_next_key, staged_key
    from app.keys import decode_key, encode_key

    current = load_keys(settings).master
    from_environment = settings.master_key is not None
    if args.new_key_stdin:
        new_key = decode_key(sys.stdin.readline(), "master")
    elif from_environment:
        new_key = secrets.token_bytes(32)
    else:
        # A key staged by an interrupted run is reused, so that run's commit is not orphaned.
        new_key = staged_key(settings.data_dir) or secrets.token_bytes(32)
    if new_key == current:
        raise CommandRefused("the new master key is the current one")
    if not from_environment:
        stage_next_key(settings.data_dir, encode_key(new_key))

    async def work(uow: UnitOfWork, _runtime: Runtime) -> int:
        result = await rewrap_all(uow.session, current, new_key)
        uow.record(EventDraft(actor=CLI_ACTOR, action=Action.ADMIN, resource="keys/master"))
        return result.customer_keys + result.service_keys

    rewrapped = in_unit_of_work(settings, work)
    print(f"shopvault: {rewrapped} data keys re-wrapped with the new master key.")
    if from_environment:
        print("Set SHOPVAULT_MASTER_KEY to this value and restart every process:")
        print(encode_key(new_key))
    else:
        promote_next_key(settings.data_dir)
        print("The new master key replaced the old one in the data directory; restart the service.")
    return 0


# --- purge --------------------------------------------------------------------------------------


def purge_command(args: argparse.Namespace, settings: Settings) -> int:
    """``--dry-run`` lists the paper forms due for disposal, per store, oldest first."""
    from app.documents.service import StoreDue, due_by_store
    from app.retention.service import date_in_japan

    if not args.dry_run:
        raise CommandRefused(
            "purge without --dry-run is not available yet; nothing was changed. "
            "`shopvault purge --dry-run` lists the paper forms due for disposal"
        )

    async def work(uow: UnitOfWork, _runtime: Runtime) -> tuple[date, list[StoreDue]]:
        return await due_by_store(uow)

    today, stores = in_unit_of_work(settings, work)
    print(
        f"Paper forms due for disposal on {today.isoformat()} (Asia/Tokyo), oldest first. "
        "Dry run: nothing was changed."
    )
    for store in stores:
        print(f"{store.code} {store.name}: {len(store.forms)} due")
        for form in store.forms:
            print(
                f"  registered {date_in_japan(form.registered_at).isoformat()}"
                f"  kept until {form.retain_until}"
                f"  {form.form_type.value:<13}  at {form.storage_location}"
                f"  customer {form.customer_id}  form {form.id}"
            )
    return 0


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

    keys = commands.add_parser("keys", help="key management")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    rotate = key_commands.add_parser(
        "rotate", help="wrap every data key with a new master key (data is untouched)"
    )
    rotate.add_argument(
        "--new-key-stdin",
        action="store_true",
        help="read the new master key (base64url of 32 random bytes) from stdin",
    )
    rotate.set_defaults(handler=keys_rotate_command)

    purge = commands.add_parser(
        "purge", help="disposal by retention rules (for now: --dry-run lists the forms due)"
    )
    purge.add_argument(
        "--dry-run",
        action="store_true",
        help="list the paper forms due for disposal, per store, oldest first; change nothing",
    )
    purge.set_defaults(handler=purge_command)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
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
