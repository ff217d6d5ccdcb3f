"""``app/db.py: among``: the same rows as ``IN`` on both databases, none for no values, and no
match for a value longer than a ``varchar(n)`` column that starts like one of its values; on
PostgreSQL one array parameter however many values (an IN list renders one per value)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import String, column, select, table, text

from app.db import among, create_request_engine, create_sync_engine, session_factory
from app.models import ShredBucket

PROBE = table("among_probe", column("id", String(8)))


def _run(database_url: str, statements: dict[str, Any]) -> dict[str, list[Any]]:
    """Each statement built by ``statements[name](session)``, run; its rows, sorted."""

    async def scenario() -> dict[str, list[Any]]:
        engine = create_request_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                return {
                    name: sorted((await session.execute(build(session))).scalars())
                    for name, build in statements.items()
                }
        finally:
            await engine.dispose()

    return asyncio.run(scenario())


def test_among_selects_what_in_selects(database_url: str) -> None:
    wanted = [7, 0, 4095, 7, 1234]
    bucket = ShredBucket.bucket
    found = _run(
        database_url,
        {
            "among": lambda s: select(bucket).where(among(s, bucket, wanted)),
            "in": lambda s: select(bucket).where(bucket.in_(wanted)),
            "none": lambda s: select(bucket).where(among(s, bucket, [])),
        },
    )
    assert found["among"] == found["in"] == [0, 7, 1234, 4095]
    assert found["none"] == []


def test_among_never_matches_a_longer_value_cut_to_the_columns_length(database_url: str) -> None:
    engine = create_sync_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE among_probe (id VARCHAR(8))"))
            connection.execute(text("INSERT INTO among_probe VALUES ('abcdefgh'), ('zz')"))
    finally:
        engine.dispose()
    found = _run(
        database_url,
        {
            "longer": lambda s: select(PROBE.c.id).where(among(s, PROBE.c.id, ["abcdefghXYZ"])),
            "exact": lambda s: select(PROBE.c.id).where(among(s, PROBE.c.id, ["abcdefgh", "zz"])),
        },
    )
    assert found == {"longer": [], "exact": ["abcdefgh", "zz"]}


def test_among_is_one_array_parameter_on_postgresql(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no arrays: IN, as before")
    engine = create_request_engine(database_url)
    try:
        session = session_factory(engine)()
        compiled = (
            select(ShredBucket.bucket)
            .where(among(session, ShredBucket.bucket, range(300)))
            .compile(engine.sync_engine)
        )
        asyncio.run(session.close())
    finally:
        asyncio.run(engine.dispose())
    assert "= ANY (" in str(compiled)
    assert len(compiled.params) == 1
