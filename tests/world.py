"""Building blocks for tests of customer access: synthetic customers (Faker ja_JP) and the POS
flow (open a visit, register a customer, read it) through the real HTTP API (an in-process
``TestClient`` or an ``httpx.Client`` on a running server)."""

from __future__ import annotations

import random
import urllib.parse
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx
from faker import Faker

from app.presence.proofs import weak_pin_reason

_faker = Faker("ja_JP")


def _phone(rng: random.Random) -> str:
    return f"090-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"


def licence_number(rng: random.Random) -> str:
    return "".join(str(rng.randint(0, 9)) for _ in range(12))


def customer_body(seed: int | None = None, **overrides: Any) -> dict[str, Any]:
    """A plausible, entirely synthetic customer registration body."""
    rng = random.Random(seed)
    _faker.seed_instance(seed)
    (family, family_kana, _), (given, given_kana, _) = (
        _faker.last_name_pair(),
        _faker.first_name_pair(),
    )
    kana = f"{family_kana} {given_kana}"
    body: dict[str, Any] = {
        "name": f"{family} {given}",
        "name_kana": kana,
        "date_of_birth": _faker.date_of_birth(minimum_age=18, maximum_age=90).isoformat(),
        "postal_code": _faker.zipcode(),
        "address": _faker.address().replace("\n", " "),
        "phone": _phone(rng),
        "email": f"user{rng.randint(10000, 99999)}@example.jp",
        "identity_document": {"type": "drivers_license", "number": licence_number(rng)},
        "consents": {"marketing_email": False, "marketing_sms": False},
    }
    body.update(overrides)
    if "pin" not in overrides:
        body["pin"] = strong_pin(rng, body)
    return body


def strong_pin(rng: random.Random, body: dict[str, Any]) -> str:
    """A PIN the customer may choose (not one the service refuses as weak)."""
    try:
        birth = date.fromisoformat(str(body["date_of_birth"]))
    except ValueError:  # a test of a bad birth date: any PIN will do
        birth = date(2000, 1, 1)
    phone = "".join(ch for ch in body["phone"] if ch.isdigit())
    while True:
        pin = f"{rng.randint(0, 9999):04d}"
        if weak_pin_reason(pin, date_of_birth=birth, phone_e164=phone) is None:
            return pin


# What each customer registered through these helpers would show at the counter: their PIN.
# (The test world remembers it for them, like the customer remembers it at the shop.)
KNOWN_PINS: dict[str, str] = {}


def presence_of(customer_id: str) -> dict[str, str]:
    """The proof of presence the customer gives at the counter."""
    return {"method": "pin", "pin": KNOWN_PINS[customer_id]}


def reason_header(text: str = "お客様からの問い合わせ対応のため") -> str:
    return urllib.parse.quote(text)


def purpose(
    headers: dict[str, str], purpose: str, *, visit: str | None = None, reason: str | None = None
) -> dict[str, str]:
    result = {**headers, "X-Access-Purpose": purpose}
    if visit is not None:
        result["X-Visit-Id"] = visit
    if reason is not None:
        result["X-Access-Reason"] = reason_header(reason)
    return result


def open_visit(
    client: httpx.Client,
    headers: dict[str, str],
    visit_type: str = "new_contract",
    customer_id: str | None = None,
) -> str:
    body: dict[str, Any] = {"type": visit_type}
    if visit_type == "repair":
        body["repair"] = {"device_model": "Galaxy S24", "symptom": "画面が割れて表示されない"}
    if customer_id is not None:
        body["customer_id"] = customer_id
        if customer_id in KNOWN_PINS and "X-Access-Reason" not in headers:
            body["presence"] = presence_of(customer_id)
    response = client.post("/visits", json=body, headers=headers)
    assert response.status_code == 201, response.text
    visit_id: str = response.json()["id"]
    return visit_id


@dataclass
class Registered:
    id: str
    visit_id: str
    body: dict[str, Any]
    view: dict[str, Any] = field(default_factory=dict)


def register_customer(
    client: httpx.Client, headers: dict[str, str], seed: int | None = None, **overrides: Any
) -> Registered:
    """Open a new-contract visit and register a customer in it (as sales or a manager)."""
    visit_id = open_visit(client, headers)
    body = customer_body(seed, **overrides)
    response = client.post(
        "/customers", json=body, headers=purpose(headers, "contract", visit=visit_id)
    )
    assert response.status_code == 201, response.text
    KNOWN_PINS[response.json()["id"]] = body["pin"]
    return Registered(id=response.json()["id"], visit_id=visit_id, body=body, view=response.json())


def add_contract(
    client: httpx.Client, headers: dict[str, str], customer_id: str, visit_id: str, seed: int = 0
) -> dict[str, Any]:
    rng = random.Random(seed)
    body = {
        "line_number": f"080-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}",
        "plan": "5G ギガプラン",
        "device": {"model": "Pixel 9", "imei": "".join(str(rng.randint(0, 9)) for _ in range(15))},
        "billing": {"payment_method": "credit_card", "account_last4": "4242"},
    }
    response = client.post(
        f"/customers/{customer_id}/contracts",
        json=body,
        headers=purpose(headers, "contract", visit=visit_id),
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    result["request"] = body
    return result
