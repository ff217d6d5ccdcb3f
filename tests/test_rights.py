"""The customer's rights: export (JSON and printable), suspension of use, erasure by
crypto-shredding (the identity record kept only while the law requires it)."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app import shred_keys
from app.crypto import DecryptionError, FieldCipher, KeyScope, MasterKey
from app.db import create_sync_engine
from app.keyring import master_ring_source
from app.main import create_app
from app.models import ConsentEvent, Contract, Customer, CustomerKey, Message, PaperForm, Visit
from app.policy import FieldGroup
from app.retention.service import today_in_japan
from app.shred_keys import FIRST_VERSION, ShredKeys, split_stored
from app.vault import Vault
from tests import cast
from tests.access_log import event_of
from tests.conftest import SettingsFactory, login, login_client
from tests.messaging import send
from tests.world import add_contract, open_visit, purpose, register_customer

Headers = dict[str, str]
PROFILE = KeyScope.PROFILE
REASON = "お客様からの開示請求への対応のため"
EXPORT_KEYS = {
    "customer",
    "contracts",
    "visits",
    "repairs",
    "documents",
    "consents",
    "messages",
    "access_report",
    "generated_at",
    "schema_version",
}


def _request(client: TestClient, manager: Headers, customer_id: str, kind: str) -> str:
    response = client.post(
        f"/customers/{customer_id}/subject-requests",
        json={"kind": kind, "channel": "store", "identity_check": "document"},
        headers=purpose(manager, "subject_request", reason=REASON),
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _on_request(manager: Headers, request_id: str) -> Headers:
    return {**purpose(manager, "subject_request"), "X-Subject-Request-Id": request_id}


def _customer_with_history(client: TestClient, as_member: Callable[..., Headers]) -> tuple:
    sales, tech = as_member(cast.SALES), as_member(cast.TECHNICIAN)
    customer = register_customer(
        client, sales, seed=301, consents={"marketing_email": True, "marketing_sms": False}
    )
    contract = add_contract(client, sales, customer.id, customer.visit_id, seed=3)
    client.patch(f"/visits/{customer.visit_id}", json={"notes": "機種変更の相談"}, headers=sales)
    repair = open_visit(client, tech, "repair", customer.id)
    form = client.post(
        f"/visits/{customer.visit_id}/documents",
        json={"form_type": "identity_copy", "storage_location": "cabinet-2"},
        headers=sales,
    )
    assert form.status_code == 201, form.text
    sent = send(
        client, purpose(sales, "support", visit=customer.visit_id), customer.id, "repair_ready"
    )
    assert sent.status_code == 202, sent.text
    return customer, contract, repair, form.json()["id"], sent.json()["id"]


def test_the_export_holds_everything_about_the_customer(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager = as_member(cast.MANAGER)
    customer, contract, repair, form_id, message_id = _customer_with_history(client, as_member)
    request_id = _request(client, manager, customer.id, "disclosure")
    response = client.get(
        f"/customers/{customer.id}/export", headers=_on_request(manager, request_id)
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    export = response.json()
    assert set(export) == EXPORT_KEYS
    assert export["schema_version"] == 1
    record = export["customer"]
    assert record["fields"] == sorted(g.value for g in FieldGroup)
    assert record["name"] == customer.body["name"]
    assert record["phone"] == customer.body["phone"]
    assert record["document_number"] == customer.body["identity_document"]["number"]
    (exported_contract,) = export["contracts"]
    assert exported_contract["id"] == contract["id"]
    assert exported_contract["line_number"] == contract["request"]["line_number"]
    assert exported_contract["device"]["imei"] == contract["request"]["device"]["imei"]
    notes = {v["id"]: v["notes"] for v in export["visits"]}
    assert notes[customer.visit_id] == "機種変更の相談"
    (exported_repair,) = export["repairs"]
    assert exported_repair["visit_id"] == repair
    assert exported_repair["symptom"] == "画面が割れて表示されない"
    assert [step["status"] for step in exported_repair["history"]] == ["received"]
    assert "by" not in exported_repair["history"][0]
    assert [d["id"] for d in export["documents"]] == [form_id]
    assert export["consents"]["marketing_email"] is True
    assert {(h["channel"], h["granted"]) for h in export["consents"]["history"]} == {
        ("email", True),
        ("sms", False),
    }
    (message,) = export["messages"]
    assert message["id"] == message_id and "Galaxy" in (message["body"] or "")
    assert any(item["purpose"] == "contract" for item in export["access_report"])
    assert all("actor" not in item for item in export["access_report"])
    event = event_of(db, response)
    assert (event.action, event.resource, event.subject_request_id) == (
        "export",
        f"customers/{customer.id}/export",
        request_id,
    )
    assert event.fields == sorted(g.value for g in FieldGroup)
    assert event.review_required is False


def test_the_export_needs_a_reason_or_a_disclosure_request(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager, sales = as_member(cast.MANAGER), as_member(cast.SALES)
    customer = register_customer(client, sales, seed=302)
    path = f"/customers/{customer.id}/export"
    visit = open_visit(client, manager, "inquiry", customer.id)
    at_visit = client.get(path, headers=purpose(manager, "subject_request", visit=visit))
    assert at_visit.status_code == 403
    assert at_visit.json()["type"] == "/problems/reason-required"
    deletion = _request(client, manager, customer.id, "deletion")
    assert client.get(path, headers=_on_request(manager, deletion)).status_code == 403
    assert client.get(path, headers=purpose(sales, "subject_request")).status_code == 403
    with_reason = client.get(path, headers=purpose(manager, "subject_request", reason=REASON))
    assert with_reason.status_code == 200
    assert event_of(db, with_reason).review_required is True


def test_the_printable_export_in_japanese(
    client: TestClient, as_member: Callable[..., Headers]
) -> None:
    manager = as_member(cast.MANAGER)
    customer = register_customer(client, as_member(cast.SALES), seed=303)
    headers = purpose(manager, "subject_request", reason=REASON)
    for response in (
        client.get(f"/customers/{customer.id}/export?format=html", headers=headers),
        client.get(f"/customers/{customer.id}/export", headers={**headers, "Accept": "text/html"}),
    ):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["cache-control"] == "no-store"
        page = response.text
        for heading in ("保有個人データの開示", "お客様の情報", "ご契約", "アクセス記録"):
            assert heading in page
        assert customer.body["name"] in page
        assert customer.body["identity_document"]["number"] in page


def test_suspension_of_use(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager, sales = as_member(cast.MANAGER), as_member(cast.SALES)
    customer = register_customer(client, sales, seed=304)
    visit = open_visit(client, sales, "inquiry", customer.id)
    request_id = _request(client, manager, customer.id, "suspension")
    suspend = f"/customers/{customer.id}/suspend"
    response = client.post(suspend, headers=_on_request(manager, request_id))
    assert response.status_code == 200, response.text
    assert response.json() == {"id": customer.id, "state": "suspended"}
    event = event_of(db, response)
    assert (event.action, event.changed_fields, event.subject_request_id) == (
        "update",
        ["state"],
        request_id,
    )
    read = client.get(f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=visit))
    assert read.status_code == 403
    assert read.json()["type"] == "/problems/customer-suspended"
    assert event_of(db, read).outcome == "denied"
    message = send(client, purpose(sales, "support", visit=visit), customer.id, "repair_ready")
    assert message.status_code == 403
    own = client.get(
        f"/customers/{customer.id}", headers=purpose(manager, "subject_request", reason=REASON)
    )
    assert own.status_code == 200
    assert client.post(suspend, headers=_on_request(manager, request_id)).status_code == 409
    resume = client.post(
        f"/customers/{customer.id}/resume", headers=_on_request(manager, request_id)
    )
    assert resume.status_code == 200 and resume.json()["state"] == "active"
    again = client.get(f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=visit))
    assert again.status_code == 200
    assert (
        client.post(
            f"/customers/{customer.id}/resume", headers=_on_request(manager, request_id)
        ).status_code
        == 409
    )


def _set_contract_end(db: Engine, contract_id: str, ended: date) -> None:
    with db.begin() as connection:
        connection.execute(
            update(Contract)
            .where(Contract.id == contract_id)
            .values(status="terminated", ended_on=ended)
        )


def test_erasure_keeps_only_the_identity_record_and_only_for_fraud_and_audit(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager, sales = as_member(cast.MANAGER), as_member(cast.SALES)
    customer, contract, _repair, form_id, _message = _customer_with_history(client, as_member)
    deletion = _request(client, manager, customer.id, "deletion")
    erase = client.delete(f"/customers/{customer.id}", headers=_on_request(manager, deletion))
    assert erase.status_code == 409  # the contract is still active
    assert erase.json()["type"] == "/problems/contract-active"
    ended = today_in_japan() - timedelta(days=30)
    _set_contract_end(db, contract["id"], ended)

    erase = client.delete(f"/customers/{customer.id}", headers=_on_request(manager, deletion))
    assert erase.status_code == 200, erase.text
    kept_until = date(ended.year + 3, ended.month, ended.day)
    assert erase.json()["identity_retained_until"] == kept_until.isoformat()
    event = event_of(db, erase)
    assert (event.action, event.subject_request_id, event.customer_ids) == (
        "delete",
        deletion,
        [customer.id],
    )
    assert "contact" in event.fields and "name" not in event.fields

    with Session(db) as session:
        row = session.get(Customer, customer.id)
        assert row is not None
        assert (row.state, row.erasure_rule, row.identity_retain_until) == (
            "erased",
            "subject_request",
            kept_until,
        )
        assert (row.pin_hash, row.document_hash, row.proof_salt) == (None, None, None)
        assert (row.phone_bidx, row.email_bidx, row.kana_birth_bidx) == ("", None, "")
        assert row.phone_enc == b"" and row.email_enc is None
        scopes = session.scalars(
            select(CustomerKey.scope).where(CustomerKey.customer_id == customer.id)
        ).all()
        assert scopes == ["identity"]
        for model in (Contract, Message, ConsentEvent):
            assert not session.scalars(select(model).where(model.customer_id == customer.id)).all()
        visits = session.scalars(select(Visit).where(Visit.customer_id == customer.id)).all()
        assert visits and all(v.notes_enc is None and v.repair_symptom_enc is None for v in visits)
        form = session.get(PaperForm, form_id)
        assert form is not None and form.retain_until == kept_until  # an identity copy

    on_reason = purpose(manager, "subject_request", reason=REASON)
    assert client.get(f"/customers/{customer.id}", headers=on_reason).status_code == 404
    again = client.delete(f"/customers/{customer.id}", headers=on_reason)
    assert again.status_code == 404
    found = client.post(
        "/customers/search",
        json={"phone": customer.body["phone"]},
        headers=purpose(sales, "contract"),
    )
    assert found.json()["items"] == []
    fraud = client.get(
        f"/customers/{customer.id}",
        headers=purpose(login_client(client, cast.FRAUD), "fraud_prevention"),
    )
    assert fraud.status_code == 200, fraud.text
    assert fraud.json()["fields"] == ["birth_date", "document_number", "identity_document", "name"]
    assert fraud.json()["document_number"] == customer.body["identity_document"]["number"]
    assert fraud.json()["name"] == customer.body["name"]
    auditor = client.get(
        f"/customers/{customer.id}",
        headers=purpose(as_member(cast.AUDITOR), "audit", reason="不正利用の調査のための確認"),
    )
    assert auditor.status_code == 200 and auditor.json()["fields"] == ["name"]
    assert client.post(f"/customers/{customer.id}/suspend", headers=on_reason).status_code == 404


def test_erasure_without_a_contract_keeps_nothing(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager = as_member(cast.MANAGER)
    customer = register_customer(client, as_member(cast.SALES), seed=305)
    on_reason = purpose(manager, "subject_request", reason=REASON)
    erased = client.delete(f"/customers/{customer.id}", headers=on_reason)
    assert erased.status_code == 200, erased.text
    assert erased.json()["identity_retained_until"] is None
    assert event_of(db, erased).review_required is True
    with Session(db) as session:
        row = session.get(Customer, customer.id)
        assert row is not None and row.name_enc == b"" and row.document_number_enc is None
        assert not session.scalars(
            select(CustomerKey).where(CustomerKey.customer_id == customer.id)
        ).all()
    fraud = client.get(
        f"/customers/{customer.id}",
        headers=purpose(login_client(client, cast.FRAUD), "fraud_prevention"),
    )
    assert fraud.status_code == 404


def test_erasure_needs_a_reason_or_a_deletion_request(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager = as_member(cast.MANAGER)
    customer = register_customer(client, as_member(cast.SALES), seed=306)
    disclosure = _request(client, manager, customer.id, "disclosure")
    path = f"/customers/{customer.id}"
    assert client.delete(path, headers=_on_request(manager, disclosure)).status_code == 403
    visit = open_visit(client, manager, "inquiry", customer.id)
    assert (
        client.delete(path, headers=purpose(manager, "subject_request", visit=visit)).status_code
        == 403
    )
    assert (
        client.delete(path, headers=purpose(manager, "subject_request", reason="短い")).status_code
        == 400
    )
    with Session(db) as session:
        assert session.get(Customer, customer.id).state == "active"  # type: ignore[union-attr]


def _copy_database(url: str, tmp_path: Path, db: Engine) -> dict[str, list]:
    """A backup taken before the erasure: the SQLite file itself, or on PostgreSQL the rows
    of the tables that hold the customer's ciphertexts and wrapped keys (a logical dump)."""
    if make_url(url).get_backend_name() == "sqlite":
        copy = tmp_path / "backup.db"
        with (
            sqlite3.connect(make_url(url).database or "") as source,
            sqlite3.connect(copy) as target,
        ):
            source.backup(target)  # the online backup API: a consistent copy, WAL included
        engine = create_sync_engine(f"sqlite:///{copy}")
    else:
        engine = db
    with engine.connect() as connection:
        dump = {
            "customer": [
                tuple(r)
                for r in connection.execute(text("SELECT id, phone_enc, name_enc FROM customer"))
            ],
            "customer_key": [
                tuple(r)
                for r in connection.execute(
                    text("SELECT customer_id, scope, wrapped_key FROM customer_key")
                )
            ],
        }
    if engine is not db:
        engine.dispose()
    return dump


def test_a_copy_taken_before_erasure_no_longer_decrypts_with_the_live_keys(
    make_settings: SettingsFactory,
    db: Engine,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One bucket for every customer: the erasure must move the neighbour's keys on, not lose them.
    monkeypatch.setattr(shred_keys, "BUCKETS", 1)
    settings = make_settings()
    shred_file = settings.resolved_shred_keys_file
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        customer = register_customer(client, sales, seed=307)
        neighbour = register_customer(client, sales, seed=308)
        backup = _copy_database(database_url, tmp_path, db)
        shred_backup = tmp_path / "shred.keys.backup"
        shutil.copyfile(shred_file, shred_backup)  # the key file as it was at the backup
        erased = client.delete(
            f"/customers/{customer.id}",
            headers=purpose(login(client, cast.MANAGER), "subject_request", reason=REASON),
        )
        assert erased.status_code == 200, erased.text
        # Before the answer: the bucket is at its next version, the old one destroyed.
        assert ShredKeys(shred_file).versions()[0] == [FIRST_VERSION + 1]
        read = client.get(
            f"/customers/{neighbour.id}",
            headers=purpose(sales, "contract", visit=neighbour.visit_id),
        )
        assert read.status_code == 200, read.text
        assert read.json()["name"] == neighbour.body["name"]
    phone_blob, name_blob = next((p, n) for cid, p, n in backup["customer"] if cid == customer.id)
    copied = {scope: w for cid, scope, w in backup["customer_key"] if cid == customer.id}
    assert set(copied) == {"identity", "profile"}

    ring = master_ring_source(settings)
    then = Vault(ring, ShredKeys(shred_backup).prepare())
    live = Vault(ring, ShredKeys(shred_file).prepare())

    def phone(cipher: FieldCipher) -> str:
        return cipher.decrypt(phone_blob, table="customer", column="phone", row_id=customer.id)

    # The copy is a real one: with the key file of its time it opens.
    assert phone(FieldCipher(then.unwrap_customer_key(copied["profile"], customer.id, PROFILE)))
    # With the live keys it does not: the shred key it was masked with is gone.
    for scope in KeyScope:
        with pytest.raises(DecryptionError):
            live.unwrap_customer_key(copied[scope.value], customer.id, scope)
    # The live master key alone gives only the masked key, which opens nothing.
    wrapped, version = split_stored(copied["profile"])
    assert version == FIRST_VERSION
    masked = MasterKey(ring.prepare().newest).unwrap(
        wrapped, customer_id=customer.id, scope=PROFILE
    )
    for blob, column in ((phone_blob, "phone"), (name_blob, "name")):
        with pytest.raises(DecryptionError):
            FieldCipher(masked).decrypt(blob, table="customer", column=column, row_id=customer.id)
    # No key row left in the live database opens the copy's ciphertexts either.
    with Session(db) as session:
        rows = session.execute(
            select(CustomerKey.customer_id, CustomerKey.scope, CustomerKey.wrapped_key)
        ).all()
    assert rows and all(cid != customer.id for cid, _scope, _wrapped in rows)
    for cid, scope_name, stored in rows:
        assert split_stored(stored)[1] == FIRST_VERSION + 1  # every key of the bucket moved on
        data_key = live.unwrap_customer_key(stored, cid, KeyScope(scope_name))
        with pytest.raises(DecryptionError):
            phone(FieldCipher(data_key))
