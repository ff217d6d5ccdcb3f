"""Dependencies every router shares."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.runtime import Runtime


async def runtime_of(request: Request) -> Runtime:
    # async: FastAPI would run a plain function in its thread pool, on every request.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(runtime_of)]


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="A retry with the same key and body gets the first answer, "
        "not a second record.",
    ),
]
