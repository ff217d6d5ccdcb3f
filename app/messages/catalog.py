"""The approved templates, read once from ``templates.toml`` (data, reviewed like code).

The file is checked when it is loaded: a wording that uses an undeclared variable, a declared
variable no wording uses, a template without both channels, or an unknown category or type stops
the service from starting rather than sending something unapproved.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from app.messages.rules import Category, Channel

CATALOG_FILE = Path(__file__).with_name("templates.toml")
PLACEHOLDER = re.compile(r"\{\{([a-z_][a-z0-9_]*)\}\}")
_ID = re.compile(r"[a-z][a-z0-9_]{1,63}")


class VariableType(StrEnum):
    TEXT = "text"
    DATE = "date"
    TIME = "time"
    NUMBER = "number"


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    type: VariableType
    max_length: int


@dataclass(frozen=True, slots=True)
class Wording:
    subject: str | None  # email only
    body: str


@dataclass(frozen=True, slots=True)
class Template:
    id: str
    title: str
    category: Category
    variables: tuple[Variable, ...]
    wordings: Mapping[Channel, Wording]

    @property
    def channels(self) -> tuple[Channel, ...]:
        return tuple(channel for channel in Channel if channel in self.wordings)


@dataclass(frozen=True, slots=True)
class MarketingFooter:
    """What 特定電子メール法 asks of an advertisement: who sends it, and how to refuse more."""

    sender_identification: str
    opt_out: Mapping[Channel, str]


@dataclass(frozen=True, slots=True)
class Catalog:
    templates: Mapping[str, Template]
    marketing: MarketingFooter

    def get(self, template_id: str) -> Template | None:
        return self.templates.get(template_id)


class CatalogError(ValueError):
    """The template file breaks one of its rules."""


def _wordings(raw: Mapping[str, Any]) -> dict[Channel, Wording]:
    wordings: dict[Channel, Wording] = {}
    if "sms" in raw:
        wordings[Channel.SMS] = Wording(None, str(raw["sms"]).strip())
    if "email_body" in raw or "email_subject" in raw:
        wordings[Channel.EMAIL] = Wording(
            str(raw["email_subject"]).strip(), str(raw["email_body"]).strip()
        )
    return wordings


def _template(raw: Mapping[str, Any]) -> Template:
    template_id = str(raw["id"])
    if not _ID.fullmatch(template_id):
        raise CatalogError(f"template id {template_id!r} is not a lower-case identifier")
    variables = tuple(
        Variable(str(v["name"]), VariableType(v["type"]), int(v["max_length"]))
        for v in raw.get("variables", [])
    )
    declared = {v.name for v in variables}
    if len(declared) != len(variables):
        raise CatalogError(f"template {template_id}: a variable is declared twice")
    wordings = _wordings(raw)
    if set(wordings) != set(Channel):
        raise CatalogError(f"template {template_id}: every template needs sms and email wording")
    for channel, wording in wordings.items():
        used = set(PLACEHOLDER.findall(wording.body + (wording.subject or "")))
        if used - declared:
            raise CatalogError(f"template {template_id} ({channel}): undeclared variable used")
        if declared - used:
            raise CatalogError(f"template {template_id} ({channel}): declared variable unused")
        if "{{" in PLACEHOLDER.sub("", wording.body + (wording.subject or "")):
            raise CatalogError(f"template {template_id} ({channel}): malformed placeholder")
    return Template(
        id=template_id,
        title=str(raw["title"]),
        category=Category(raw["category"]),
        variables=variables,
        wordings=wordings,
    )


def parse_catalog(text: str) -> Catalog:
    data = tomllib.loads(text)
    templates: dict[str, Template] = {}
    for raw in data.get("template", []):
        template = _template(raw)
        if template.id in templates:
            raise CatalogError(f"template id {template.id} is used twice")
        templates[template.id] = template
    for category in Category:
        for channel in Channel:
            if not any(
                t.category is category and channel in t.wordings for t in templates.values()
            ):
                raise CatalogError(f"no {channel} template for category {category}")
    marketing = data["marketing"]
    footer = MarketingFooter(
        sender_identification=str(marketing["sender_identification"]),
        opt_out={
            Channel.EMAIL: str(marketing["opt_out_email"]),
            Channel.SMS: str(marketing["opt_out_sms"]),
        },
    )
    return Catalog(templates=templates, marketing=footer)


CATALOG = parse_catalog(CATALOG_FILE.read_text(encoding="utf-8"))
