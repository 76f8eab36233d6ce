"""A web dashboard for operators: sessions with live status and cost, a live view of
running inferences, cancel and close buttons, and schedules.

`create_app(client)` returns the FastAPI app; `geppetto dashboard` serves it. It
needs the optional web dependencies (FastAPI, uvicorn, Jinja2), which the package
depends on; import this module only where the dashboard is wanted.
"""

from __future__ import annotations

from geppetto_temporal.dashboard._app import (
    TOKEN_COOKIE,
    DashboardConfigError,
    check_bind,
    create_app,
    is_loopback,
)
from geppetto_temporal.dashboard._data import (
    ScheduleRow,
    SessionFilter,
    SessionRow,
    list_schedule_rows,
    list_session_rows,
)

__all__ = [
    "TOKEN_COOKIE",
    "DashboardConfigError",
    "ScheduleRow",
    "SessionFilter",
    "SessionRow",
    "check_bind",
    "create_app",
    "is_loopback",
    "list_schedule_rows",
    "list_session_rows",
]
