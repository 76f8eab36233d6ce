"""Helpers for the gateway tests: the app served by uvicorn on a free port, SSE read over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from geppetto_temporal import EngineBuilder
from tests.ports import free_port


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: pytest keeps Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: FastAPI, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free port of `host` in this event loop; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert not task.done(), "the gateway server did not start"
            assert time.monotonic() < deadline, "the gateway server took too long to start"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(task, 10)


@dataclass
class Frame:
    """One SSE frame as a browser's EventSource would see it (or a comment line)."""

    id: str | None = None
    event: str | None = None
    data: str = ""
    comment: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """The frames of a text/event-stream response, comments included, as they arrive."""
    current = Frame()
    async for line in response.aiter_lines():
        if line == "":
            if current.data or current.id is not None or current.event is not None:
                yield current
            current = Frame()
        elif line.startswith(":"):
            yield Frame(comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                current.id = value
            elif name == "event":
                current.event = value
            elif name == "data":
                current.data = f"{current.data}\n{value}" if current.data else value


def engine_json(base_url: str, **llm: float) -> dict[str, Any]:
    """An engine spec (as the API takes it) for the scripted server at `base_url`."""
    builder = EngineBuilder("openai:scripted").base_url(base_url)
    builder = builder.llm_activity(heartbeat_seconds=5, **llm).tool_heartbeat(10)  # type: ignore[arg-type]
    return builder.build().model_dump(mode="json")
