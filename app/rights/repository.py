"""What the customer's rights read and destroy: their consents, forms and messages for the
export, their state, and the rows and keys erasure removes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import among
from app.documents.rules import FormType
from app.models import (
    ConsentEvent,
    Contract,
    Customer,
    CustomerKey,
    Message,
    PaperForm,
    PresenceCode,
    Store,
    Visit,
)

MESSAGE_KIND = "message"
# The forms that carry the identity-verification record: kept as long as the law says, even
# after erasure (the others are due for disposal at once).
IDENTITY_FORMS = (FormType.IDENTITY_COPY.value, FormType.APPLICATION.value)


async def consent_history(
    session: AsyncSession, customer_id: str
) -> Sequence[tuple[ConsentEvent, str | None]]:
    statement = (
        select(ConsentEvent, Store.code)
        .outerjoin(Store, Store.id == ConsentEvent.store_id)
        .where(ConsentEvent.customer_id == customer_id)
        .order_by(ConsentEvent.at, ConsentEvent.id)
    )
    return [(event, code) for event, code in (await session.execute(statement)).all()]


async def forms_of(session: AsyncSession, customer_id: str) -> Sequence[tuple[PaperForm, str]]:
    statement = (
        select(PaperForm, Store.code)
        .join(Store, Store.id == PaperForm.store_id)
        .where(PaperForm.customer_id == customer_id)
        .order_by(PaperForm.registered_at, PaperForm.id)
    )
    return [(form, code) for form, code in (await session.execute(statement)).all()]


async def messages_of(session: AsyncSession, customer_id: str) -> Sequence[Message]:
    statement = (
        select(Message)
        .where(Message.customer_id == customer_id, Message.kind == MESSAGE_KIND)
        .order_by(Message.created_at, Message.id)
    )
    return (await session.execute(statement)).scalars().all()


async def lock_state(session: AsyncSession, customer_id: str) -> str | None:
    """The customer's state, with the row locked for the change that follows."""
    statement = select(Customer.state).where(Customer.id == customer_id).with_for_update()
    return (await session.execute(statement)).scalar_one_or_none()


async def set_state(session: AsyncSession, customer_id: str, state: str) -> None:
    await session.execute(update(Customer).where(Customer.id == customer_id).values(state=state))


async def contract_ends(
    session: AsyncSession, customer_ids: Sequence[str]
) -> dict[str, list[tuple[str, date | None]]]:
    """Each customer's contracts: (status, the day it ended)."""
    statement = select(Contract.customer_id, Contract.status, Contract.ended_on).where(
        among(session, Contract.customer_id, customer_ids)
    )
    ends: dict[str, list[tuple[str, date | None]]] = {cid: [] for cid in customer_ids}
    for customer_id, status, ended in (await session.execute(statement)).all():
        ends[customer_id].append((status, ended))
    return ends


def _by_value(values: Mapping[str, date | None]) -> dict[date | None, list[str]]:
    grouped: dict[date | None, list[str]] = {}
    for customer_id, value in values.items():
        grouped.setdefault(value, []).append(customer_id)
    return grouped


async def destroy_profile(
    session: AsyncSession,
    identity_until: Mapping[str, date | None],
    *,
    rule: str,
    now: datetime,
) -> None:
    """For each customer (kept until the date given, or not at all): everything but the
    identity-verification record — the profile key (its ciphertexts, messages included, are
    unreadable from now on, in every copy), the rows that hang off the customer, the proofs of
    presence, the blind-index values, visit notes and symptoms."""
    ids = list(identity_until)
    await session.execute(
        delete(CustomerKey).where(
            among(session, CustomerKey.customer_id, ids), CustomerKey.scope == "profile"
        )
    )
    await session.execute(delete(PresenceCode).where(among(session, PresenceCode.customer_id, ids)))
    await session.execute(delete(Message).where(among(session, Message.customer_id, ids)))
    await session.execute(delete(ConsentEvent).where(among(session, ConsentEvent.customer_id, ids)))
    await session.execute(delete(Contract).where(among(session, Contract.customer_id, ids)))
    await session.execute(
        update(Visit)
        .where(among(session, Visit.customer_id, ids))
        .values(notes_enc=None, repair_symptom_enc=None)
    )
    for until, group in _by_value(identity_until).items():
        await session.execute(
            update(Customer)
            .where(among(session, Customer.id, group))
            .values(
                state="erased",
                erased_at=now,
                erasure_rule=rule,
                identity_retain_until=until,
                # Emptied, not kept: the columns cannot be null, and nothing reads an erased value.
                phone_enc=b"",
                email_enc=None,
                phone_bidx="",
                email_bidx=None,
                kana_birth_bidx="",
                proof_salt=None,
                pin_hash=None,
                document_hash=None,
                marketing_email=False,
                marketing_sms=False,
            )
        )


async def destroy_identity(session: AsyncSession, customer_ids: Sequence[str]) -> None:
    """The identity-verification records, once the law no longer requires them: their keys and
    their values. What remains is the tombstone (id, when, rule)."""
    if not customer_ids:
        return
    await session.execute(
        delete(CustomerKey).where(
            among(session, CustomerKey.customer_id, customer_ids), CustomerKey.scope == "identity"
        )
    )
    await session.execute(
        update(Customer)
        .where(among(session, Customer.id, customer_ids))
        .values(
            name_enc=b"",
            name_kana_enc=b"",
            date_of_birth_enc=b"",
            postal_code_enc=b"",
            address_enc=b"",
            document_number_enc=None,
            identity_retain_until=None,
        )
    )


async def forms_due_now(
    session: AsyncSession, customer_ids: Sequence[str], yesterday: date
) -> None:
    """Forms that do not carry the identity-verification record: due for disposal from today."""
    await session.execute(
        update(PaperForm)
        .where(
            among(session, PaperForm.customer_id, customer_ids),
            PaperForm.disposed_at.is_(None),
            PaperForm.form_type.not_in(IDENTITY_FORMS),
        )
        .values(retain_until=yesterday, retention_rule="erasure")
    )


async def identity_forms_until(
    session: AsyncSession, identity_until: Mapping[str, date | None], yesterday: date
) -> None:
    """The identity forms follow the record: kept until its date (due from today if None)."""
    for until, group in _by_value(identity_until).items():
        await session.execute(
            update(PaperForm)
            .where(
                among(session, PaperForm.customer_id, group),
                PaperForm.disposed_at.is_(None),
                PaperForm.form_type.in_(IDENTITY_FORMS),
            )
            .values(retain_until=until or yesterday)
        )
