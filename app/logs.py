"""Structured JSON logs. Only fixed messages and whitelisted, non-personal fields are written."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from app.request_context import current_request_id

# Extra fields that may appear in a log line; anything else passed in ``extra`` is dropped.
ALLOWED_FIELDS = frozenset(
    {
        "method",
        "route",
        "status",
        "duration_ms",
        "key",
        "env",
        "path",
        "event",
        "count",
        "problem",
        "host",
        "port",
        "workers",
        "error",
        # the outbox worker: ids, channels and short codes only, never an address or a text
        "message_id",
        "channel",
        "outcome",
        "failure",
        "attempts",
        "worker",
        "delivery",
    }
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": current_request_id(),
        }
        for name in ALLOWED_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's type only: messages of database errors can quote bound values.
            line["exc_type"] = record.exc_info[0].__name__
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Our middleware writes the access log (with route templates, not raw paths).
    logging.getLogger("uvicorn.access").disabled = True
