"""``app/db.py: among``: the same rows as ``IN`` on both databases, none for no values; on
PostgreSQL one array parameter however many values (an IN list renders one per value)."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from app.db import among, create_request_engine, session_factory
from app.models import ShredBucket


def test_among_selects_what_in_selects(database_url: str) -> None:
    wanted = [7, 0, 4095, 7, 1234]

    async def scenario() -> tuple[list[int], list[int], list[int], str, int]:
        engine = create_request_engine(database_url)
        try:
            async with session_factory(engine)() as session:

                async def buckets(values: list[int]) -> list[int]:
                    statement = select(ShredBucket.bucket).where(
                        among(session, ShredBucket.bucket, values)
                    )
                    return sorted((await session.execute(statement)).scalars())

                inside = sorted(
                    (
                        await session.execute(
                            select(ShredBucket.bucket).where(ShredBucket.bucket.in_(wanted))
                        )
                    ).scalars()
                )
                compiled = (
                    select(ShredBucket.bucket)
                    .where(among(session, ShredBucket.bucket, range(300)))
                    .compile(engine.sync_engine)
                )
                return (
                    await buckets(wanted),
                    inside,
                    await buckets([]),
                    str(compiled),
                    len(compiled.params),
                )
        finally:
            await engine.dispose()

    found, inside, none, sql, parameters = asyncio.run(scenario())
    assert found == inside == [0, 7, 1234, 4095]
    assert none == []
    if database_url.startswith("postgresql"):
        assert "= ANY (" in sql
        assert parameters == 1
