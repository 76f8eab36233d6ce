"""The web gateway: geppetto's sessions over HTTP, with resumable event streams.

`create_app(client)` returns the FastAPI app; `geppetto serve` serves it (docs/gateway.md).
It needs the `gateway` extra (FastAPI, uvicorn, ag-ui-protocol); import this package
only where the gateway is wanted.
"""

from __future__ import annotations

from geppetto_temporal.gateway._app import KEEPALIVE_SECONDS, MAX_BODY_BYTES, create_app
from geppetto_temporal.gateway._cursor import Cursor
from geppetto_temporal.gateway._formats import AI_SDK_HEADERS, FORMATS

__all__ = [
    "AI_SDK_HEADERS",
    "FORMATS",
    "KEEPALIVE_SECONDS",
    "MAX_BODY_BYTES",
    "Cursor",
    "create_app",
]
