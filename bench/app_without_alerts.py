"""shopvault as ``app.main:app`` serves it, but no alert rule is evaluated after an append.

Issue 13 asks that the rules be evaluated as events are written "without slowing a request
noticeably": the audited-read scenario loads this app in the same rotation as the real one and
the bare one, and ``alert_overhead_ratio`` compares the two shopvault apps.

uvicorn serves ``bench.app_without_alerts:app``, built on first access from the environment.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.main import app_from_environment
from app.runtime import Runtime


def _build() -> FastAPI:
    application = app_from_environment()
    runtime: Runtime = application.state.runtime
    runtime.audit_log.stop_listening(runtime.alerts.on_append)
    return application


def __getattr__(name: str) -> Any:
    if name == "app":
        application = _build()
        globals()["app"] = application
        return application
    raise AttributeError(name)
