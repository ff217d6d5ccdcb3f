"""Settings, read once from the environment (prefix ``SHOPVAULT_``)."""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# PostgreSQL connections each API process keeps (``app/db.py`` says why there is no overflow).
DB_POOL_SIZE = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOPVAULT_", extra="ignore", frozen=True)

    data_dir: Path = Path("./data")
    database_url: str | None = None
    migration_database_url: str | None = None
    db_pool_size: int = Field(default=DB_POOL_SIZE, ge=1, le=200)

    jwt_key: SecretStr | None = None
    master_key: SecretStr | None = None
    # More master keys that open data keys but never wrap new ones (comma-separated): the old
    # key while a rotation finishes, or the next key before it becomes MASTER_KEY.
    other_master_keys: SecretStr | None = None
    index_key: SecretStr | None = None
    jwt_issuer: str = "shopvault"
    jwt_audience: str = "shopvault-api"
    token_ttl_seconds: int = Field(default=900, ge=60, le=86_400)

    visit_auto_close_hours: float = Field(default=4, gt=0)
    search_rate_limit: str = "30/10minutes"
    login_rate_limit: str = "10/5minutes"
    # Failed PIN / SMS-code proofs per customer: the first window locks those proofs for its
    # length; the second locks them until a document proof or a manager's reason succeeds.
    presence_lock: str = "5/30minutes;10/24hours"
    redis_url: str | None = None
    # Keys in Redis start with this (several deployments, or test runs, may share one Redis).
    redis_key_prefix: str = Field(default="shopvault", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    trusted_proxies: str = ""

    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    email_sender: str | None = None
    sms_sender_id: str | None = None
    sms_gateway_url: str | None = None
    sms_gateway_token: SecretStr | None = None
    message_daily_cap: int = Field(default=3, ge=0)
    # The compliance mailbox told of each new alert (rule, store, role, count; no customer data).
    alert_email: str | None = None
    # A customer's request (APPI) is due this many days after it was received.
    subject_request_due_days: int = Field(default=14, ge=1, le=365)

    # The access log's checkpoints, appended outside the database (see docs/audit-chain.md).
    audit_checkpoint_file: Path | None = None
    # Outside the database, like the keys: what makes an erasure reach database backups.
    shred_keys_file: Path | None = None
    # Alert thresholds: "more than N within the period" per caller.
    alert_bulk_read: str = "20/10minutes"
    alert_denied_burst: str = "5/10minutes"
    alert_search_misses: str = "10/10minutes"
    alert_presence_failures: str = "10/30minutes"

    # Browser origins allowed to call the API cross-origin (comma-separated, exact origins such
    # as ``https://pos.example.jp``); none by default: CORS stays closed.
    cors_origins: str = ""
    # The bearer token /metrics asks for; unset, /metrics answers only on the loopback interface.
    metrics_token: SecretStr | None = None

    log_level: str = "INFO"

    @field_validator(
        "search_rate_limit",
        "login_rate_limit",
        "alert_bulk_read",
        "alert_denied_burst",
        "alert_search_misses",
        "alert_presence_failures",
    )
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        from limits import parse

        parse(value)
        return value

    @field_validator("presence_lock")
    @classmethod
    def _presence_lock_parses(cls, value: str) -> str:
        from limits import parse_many

        if len(parse_many(value)) != 2:
            raise ValueError("two windows: the timed lock, then the lock until a document proof")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_parse(cls, value: str) -> str:
        for part in _split(value):
            ipaddress.ip_network(part, strict=False)
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins_parse(cls, value: str) -> str:
        for origin in _split(value):
            if not _ORIGIN.fullmatch(origin):
                raise ValueError("each CORS origin is scheme://host[:port], without a path")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("the metrics token must be at least 16 characters")
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return _split(self.cors_origins)

    @cached_property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in _split(self.trusted_proxies))

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'shopvault.db').resolve()}"

    @property
    def resolved_checkpoint_file(self) -> Path:
        return self.audit_checkpoint_file or self.data_dir / "audit-checkpoints.jsonl"

    @property
    def resolved_shred_keys_file(self) -> Path:
        return self.shred_keys_file or self.data_dir / "shred.keys"

    @property
    def resolved_migration_database_url(self) -> str:
        return self.migration_database_url or self.resolved_database_url


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?")


def _split(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]
