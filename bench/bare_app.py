"""The baseline: a bare FastAPI app doing the audited read's database work and nothing else.

``GET /customers/{id}`` selects one row by primary key, inserts one audit row, commits and
answers the row as JSON: async SQLAlchemy 2 with asyncpg, a pool sized like the real app's
(``app/db.py``). No auth, policy, encryption, hash chain, middleware or logging: whatever the
real app spends beyond this is the price of its promises.

uvicorn serves ``bench.bare_app:app``, built on first access from ``BENCH_BARE_DATABASE_URL``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException
from sqlalchemy import DateTime, MetaData, String, Text, create_engine, insert
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.config import Settings
from app.db import async_url, sync_url

URL_ENV = "BENCH_BARE_DATABASE_URL"


class BareBase(DeclarativeBase):
    metadata = MetaData()


class BenchCustomer(BareBase):
    __tablename__ = "bench_customer"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    name_kana: Mapped[str] = mapped_column(Text)
    phone: Mapped[str] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    address: Mapped[str] = mapped_column(Text)


class BenchEvent(BareBase):
    __tablename__ = "bench_event"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(16))
    resource: Mapped[str] = mapped_column(String(200))
    customer_id: Mapped[str] = mapped_column(String(36), index=True)


def create_bare_app(url: str) -> FastAPI:
    # The same pool as shopvault's (SHOPVAULT_DB_POOL_SIZE, no overflow).
    pool = Settings().db_pool_size
    engine = create_async_engine(async_url(url), pool_size=pool, max_overflow=0)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(title="bench-bare", lifespan=lifespan)
    app.state.engine = engine

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/customers/{customer_id}")
    async def read_customer(customer_id: str) -> dict[str, Any]:
        async with sessions() as session:
            customer = await session.get(BenchCustomer, customer_id)
            if customer is None:
                raise HTTPException(status_code=404)
            session.add(
                BenchEvent(
                    id=str(uuid.uuid4()),
                    at=datetime.now(UTC),
                    action="read",
                    resource=f"customers/{customer.id}",
                    customer_id=customer.id,
                )
            )
            await session.commit()
            return {
                "id": customer.id,
                "name": customer.name,
                "name_kana": customer.name_kana,
                "phone": customer.phone,
                "email": customer.email,
                "address": customer.address,
            }

    return app


def create_bare_tables(url: str) -> str:
    """Create the baseline's tables and its one customer; returns the customer's id."""
    engine = create_engine(sync_url(url))
    customer_id = str(uuid.uuid4())
    try:
        BareBase.metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(
                insert(BenchCustomer).values(
                    id=customer_id,
                    name="山田 太郎",
                    name_kana="ヤマダ タロウ",
                    phone="+819012345678",
                    email="bench@example.jp",
                    address="東京都渋谷区神南1-2-3",
                )
            )
    finally:
        engine.dispose()
    return customer_id


def __getattr__(name: str) -> Any:
    # ``bench.bare_app:app`` for uvicorn, built when a worker first asks for it.
    if name == "app":
        application = create_bare_app(os.environ[URL_ENV])
        globals()["app"] = application
        return application
    raise AttributeError(name)
