"""Promise 5: a copy of the database shows no personal value in plain text."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from tests import cast
from tests.world import add_contract, presence_of, purpose, register_customer


def _raw_database(backend: str, database_url: str) -> bytes:
    """Every byte the database keeps: the SQLite file with its WAL, or a pg_dump."""
    if backend == "sqlite":
        path = Path(make_url(database_url).database or "")
        chunks = [path.read_bytes()]
        for suffix in ("-wal", "-journal"):
            extra = path.with_name(path.name + suffix)
            if extra.exists():
                chunks.append(extra.read_bytes())
        return b"".join(chunks)
    url = make_url(database_url)
    dump = subprocess.run(
        [
            "pg_dump",
            "--no-owner",
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            url.database or "",
        ],
        check=True,
        capture_output=True,
    )
    return dump.stdout


def _forms(value: str) -> list[str]:
    """The value and the forms it could be stored in (digits only, E.164, no spaces)."""
    forms = {value, value.replace(" ", ""), value.replace("　", "")}
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) >= 8:
        forms.add(digits)
        if digits.startswith("0"):
            forms.add("+81" + digits[1:])
    return [form for form in forms if len(form) >= 4]


def test_no_personal_value_in_plain_text(
    client: TestClient,
    as_member: Callable[..., dict[str, str]],
    backend: str,
    database_url: str,
    db: Engine,
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=4242)
    contract = add_contract(client, sales, customer.id, customer.visit_id, seed=7)
    notes = "お客様より連絡先の変更希望あり、折り返し連絡予定"
    repair_visit = client.post(
        "/visits",
        json={
            "type": "repair",
            "customer_id": customer.id,
            "presence": presence_of(customer.id),
            "notes": notes,
            "repair": {"device_model": "Galaxy S24", "symptom": "充電ケーブルを挿しても反応しない"},
        },
        headers=sales,
    )
    assert repair_visit.status_code == 201, repair_visit.text
    # Read it back too, so that nothing decrypted is ever written anywhere as a side effect.
    read = client.get(
        f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=customer.visit_id)
    )
    assert read.status_code == 200
    assert read.json()["name"] == customer.body["name"]

    raw = _raw_database(backend, database_url)
    assert len(raw) > 10_000

    body = customer.body
    values = [
        body["name"],
        body["name"].split(" ")[0],
        body["name_kana"],
        body["date_of_birth"],
        body["postal_code"],
        body["address"],
        body["phone"],
        body["email"],
        body["identity_document"]["number"],
        contract["request"]["line_number"],
        contract["request"]["device"]["imei"],
        notes,
        "充電ケーブルを挿しても反応しない",
    ]
    for value in values:
        for form in _forms(value):
            assert form.encode() not in raw, f"plain text found for a {len(form)}-char value"


@pytest.mark.parametrize("column", ["name_enc", "phone_enc", "address_enc"])
def test_ciphertexts_are_bound_to_their_row(
    client: TestClient,
    as_member: Callable[..., dict[str, str]],
    db: Engine,
    column: str,
) -> None:
    """A ciphertext moved to another customer's row does not decrypt there (AAD binds the row):
    the read fails closed instead of disclosing the other customer's value."""
    sales = as_member(cast.SALES)
    first = register_customer(client, sales, seed=1)
    second = register_customer(client, sales, seed=2)
    with db.begin() as connection:
        connection.execute(
            text(
                f"UPDATE customer SET {column} = "
                f"(SELECT {column} FROM customer WHERE id = :a) WHERE id = :b"
            ),
            {"a": first.id, "b": second.id},
        )
    response = client.get(
        f"/customers/{second.id}", headers=purpose(sales, "contract", visit=second.visit_id)
    )
    assert response.status_code == 500
    assert response.json()["type"] == "/problems/data-integrity"
    assert first.body["name"] not in response.text
    assert first.body["phone"] not in response.text
