"""Filling a template: only its declared variables, each checked against its type.

A variable is data, never wording: values are substituted once (a value that looks like a
placeholder stays text), and a ``text`` value may carry no URL, e-mail address, phone number or
Individual Number — a template's wording decides where a customer is sent, not the sender. No
type allows those, so no variable can smuggle in a link or a number to call.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from app.errors import ValidationFailed
from app.messages.catalog import CATALOG, PLACEHOLDER, Catalog, Template, VariableType
from app.messages.rules import SMS_MAX_LENGTH, Category, Channel, sms_length
from app.validation import HYPHENS
from app.validation.mynumber import contains_individual_number

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]")
_NUMBER = re.compile(r"[0-9]+")
_LINK = re.compile(r"[a-z][a-z0-9+.-]*:/|www\.|[a-z0-9-]+\.[a-z]{2,}(?:[/:?#]|\b)|@", re.IGNORECASE)
# Eight digits or more, however grouped: phone, card, account or Individual Numbers.
_LONG_NUMBER = re.compile(rf"[0-9](?:[\s().+{re.escape(HYPHENS)}]*[0-9]){{7,}}")


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str | None
    body: str


def _error(name: str | None, kind: str, msg: str) -> dict[str, Any]:
    loc: list[str] = ["body", "variables"] if name is None else ["body", "variables", name]
    return {"loc": loc, "type": kind, "msg": msg}


def _text(value: Any, max_length: int) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    text = unicodedata.normalize("NFC", value).strip()
    if not text:
        raise ValueError("may not be empty")
    if len(text) > max_length:
        raise ValueError(f"may be at most {max_length} characters long")
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"} for ch in text):
        raise ValueError("may not contain line breaks or control characters")
    folded = unicodedata.normalize("NFKC", text)
    if _LINK.search(folded):
        raise ValueError("may not contain a link or an e-mail address")
    if _LONG_NUMBER.search(folded) or contains_individual_number(folded):
        raise ValueError("may not contain a phone number or another long number")
    if "{{" in folded or "}}" in folded:
        raise ValueError("may not contain braces")
    return text


def _date(value: Any) -> str:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise ValueError("must be a date, YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a date, YYYY-MM-DD") from None
    return f"{day.year}年{day.month}月{day.day}日"


def _time(value: Any) -> str:
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise ValueError("must be a time, HH:MM (24 hours)")
    return value


def _number(value: Any, max_length: int) -> str:
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not _NUMBER.fullmatch(value):
        raise ValueError("must be a whole number, 0 or more")
    if len(value.lstrip("0") or "0") > max_length:
        raise ValueError(f"may have at most {max_length} digits")
    return f"{int(value):,}"


def check_variables(template: Template, values: Mapping[str, Any]) -> dict[str, str]:
    """The values as they will be shown, or a ``422`` listing what is wrong (never the value;
    an undeclared name is not repeated either: it is caller input)."""
    errors: list[dict[str, Any]] = []
    declared = {v.name for v in template.variables}
    if set(values) - declared:
        errors.append(_error(None, "extra_forbidden", "Variables the template does not declare."))
    shown: dict[str, str] = {}
    for variable in template.variables:
        if variable.name not in values:
            errors.append(_error(variable.name, "missing", "Field required"))
            continue
        value = values[variable.name]
        try:
            match variable.type:
                case VariableType.TEXT:
                    shown[variable.name] = _text(value, variable.max_length)
                case VariableType.DATE:
                    shown[variable.name] = _date(value)
                case VariableType.TIME:
                    shown[variable.name] = _time(value)
                case VariableType.NUMBER:
                    shown[variable.name] = _number(value, variable.max_length)
        except ValueError as exc:
            errors.append(_error(variable.name, "value_error", f"Value error, {exc}"))
    if errors:
        raise ValidationFailed(extra={"errors": errors})
    return shown


def _fill(wording: str, shown: Mapping[str, str]) -> str:
    return PLACEHOLDER.sub(lambda match: shown[match.group(1)], wording)


def render(
    template: Template,
    channel: Channel,
    values: Mapping[str, Any],
    *,
    catalog: Catalog = CATALOG,
) -> Rendered:
    """The message as the customer will read it; ``422`` when a variable or the length is not
    acceptable, or the template has no wording for the channel."""
    wording = template.wordings.get(channel)
    if wording is None:
        raise ValidationFailed(
            extra={"errors": [_channel_error("The template has no wording for this channel.")]}
        )
    shown = check_variables(template, values)
    subject = _fill(wording.subject, shown) if wording.subject is not None else None
    body = _fill(wording.body, shown)
    if template.category is Category.MARKETING:
        footer = catalog.marketing
        separator = "\n" if channel is Channel.SMS else "\n\n--\n"
        body = f"{body}{separator}{footer.sender_identification}\n{footer.opt_out[channel]}"
    if channel is Channel.SMS and sms_length(body) > SMS_MAX_LENGTH:
        raise ValidationFailed(
            f"The SMS would be longer than {SMS_MAX_LENGTH} characters.",
            extra={"errors": [_error(None, "too_long", "The rendered SMS is too long.")]},
        )
    return Rendered(subject=subject, body=body)


def _channel_error(msg: str) -> dict[str, Any]:
    return {"loc": ["body", "channel"], "type": "channel_unsupported", "msg": msg}
