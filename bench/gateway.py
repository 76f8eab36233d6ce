"""The web gateway against the Python client, same script, same server, same worker.

1. Time to first token: from sending the prompt to the first text delta in hand, through
   the Python client (`Session.start_inference` + `ExecutionHandle.events()`) and through
   the gateway (POST .../prompts, then GET .../events over HTTP, SSE parsed). Runs
   alternate between the two; the ratio is gateway / client (medians).
2. Events per second per open stream: one fast reply (`--chunks` deltas, `--chunk-delay`
   apart) watched by `--streams` SSE streams at once through the gateway, and by as many
   `events()` subscribers in-process; events and characters per second each stream gets.

The gateway is served by uvicorn on a free loopback port of this process (as `geppetto
serve` does), against an embedded dev server and an in-process worker. Prints a table
and one JSON line.

    .venv/bin/python bench/gateway.py [--runs 10] [--chunks 2000] [--chunk-delay 0.002] [--streams 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from geppetto_temporal import EngineBuilder, Session, connect, create_worker
from geppetto_temporal.devserver import EmbeddedServer
from geppetto_temporal.events import PartialEvent
from geppetto_temporal.gateway import create_app
from geppetto_temporal.testing import ScriptedModelServer

TASK_QUEUE = "geppetto-bench-gateway"


def script(chunks: int, chunk_delay: float) -> dict[str, Any]:
    return {
        "rules": [
            {
                "when": {"last_user_contains": "long"},
                "reply": {"text": "abcd" * chunks, "chunk_size": 4, "chunk_delay": chunk_delay},
            },
            {"reply": {"text": "The first token, then a few more.", "chunk_size": 4}},
        ]
    }


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            raise RuntimeError("the gateway did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def sse(http: httpx.AsyncClient, url: str) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of an SSE stream."""
    async with http.stream("GET", url) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


async def ttft_client(session: Session) -> float:
    start = time.perf_counter()
    handle = await session.start_inference(f"short {uuid.uuid4().hex}")
    first = 0.0
    async for event in handle.events():
        if isinstance(event, PartialEvent) and event.delta and not first:
            first = time.perf_counter() - start
    return first


async def ttft_gateway(http: httpx.AsyncClient, base: str, session_id: str) -> float:
    start = time.perf_counter()
    response = await http.post(
        f"{base}/v1/sessions/{session_id}/prompts", json={"prompt": f"short {uuid.uuid4().hex}"}
    )
    response.raise_for_status()
    first = 0.0
    async for event in sse(http, base + response.json()["links"]["events"]):
        if event["type"] == "partial" and event["delta"] and not first:
            first = time.perf_counter() - start
    return first


async def rate_gateway(
    http: httpx.AsyncClient, base: str, session_id: str, streams: int
) -> list[tuple[float, float]]:
    """(events/s, characters/s) of each of `streams` SSE streams of one fast reply."""
    response = await http.post(
        f"{base}/v1/sessions/{session_id}/prompts", json={"prompt": "long reply"}
    )
    url = base + response.json()["links"]["events"]

    async def one() -> tuple[float, float]:
        events, chars, first, last = 0, 0, 0.0, 0.0
        async for event in sse(http, url):
            if event["type"] == "partial":
                now = time.perf_counter()
                first = first or now
                last = now
                events += 1
                chars += len(event["delta"])
        span = max(last - first, 1e-6)
        return events / span, chars / span

    return list(await asyncio.gather(*(one() for _ in range(streams))))


async def rate_client(session: Session, streams: int) -> list[tuple[float, float]]:
    handle = await session.start_inference("long reply")

    async def one() -> tuple[float, float]:
        events, chars, first, last = 0, 0, 0.0, 0.0
        async for event in handle.events():
            if isinstance(event, PartialEvent):
                now = time.perf_counter()
                first = first or now
                last = now
                events += 1
                chars += len(event.delta)
        span = max(last - first, 1e-6)
        return events / span, chars / span

    return list(await asyncio.gather(*(one() for _ in range(streams))))


async def main(runs: int, chunks: int, chunk_delay: float, streams: int) -> dict[str, Any]:
    async with (
        ScriptedModelServer(script(chunks, chunk_delay)) as model,
        EmbeddedServer(Path(tempfile.mkdtemp(prefix="geppetto-bench-"))) as server,
    ):
        client = await connect(server.address, from_env=False)
        spec = EngineBuilder("openai:scripted").base_url(model.base_url).no_tools().build()
        async with (
            create_worker(client, task_queue=TASK_QUEUE, allow_any_base_url=True),
            serve(create_app(client, task_queue=TASK_QUEUE)) as base,
            httpx.AsyncClient(timeout=120) as http,
        ):
            via_client = await Session.create(client, spec, task_queue=TASK_QUEUE)
            created = await http.post(
                f"{base}/v1/sessions", json={"engine": spec.model_dump(mode="json")}
            )
            via_gateway = created.json()["session_id"]
            await ttft_client(via_client)  # warm both paths up
            await ttft_gateway(http, base, via_gateway)
            client_s: list[float] = []
            gateway_s: list[float] = []
            for _ in range(runs):
                client_s.append(await ttft_client(via_client))
                gateway_s.append(await ttft_gateway(http, base, via_gateway))
            gateway_rates = await rate_gateway(http, base, via_gateway, streams)
            client_rates = await rate_client(via_client, streams)
    result = {
        "runs": runs,
        "ttft_client_ms": statistics.median(client_s) * 1000,
        "ttft_gateway_ms": statistics.median(gateway_s) * 1000,
        "ttft_ratio": statistics.median(gateway_s) / statistics.median(client_s),
        "streams": streams,
        "chunks": chunks,
        "chunk_delay": chunk_delay,
        "gateway_events_per_s_per_stream": statistics.median(r[0] for r in gateway_rates),
        "gateway_chars_per_s_per_stream": statistics.median(r[1] for r in gateway_rates),
        "client_events_per_s_per_stream": statistics.median(r[0] for r in client_rates),
        "client_chars_per_s_per_stream": statistics.median(r[1] for r in client_rates),
    }
    print(f"time to first token, median of {runs}:")
    print(f"  Python client  {result['ttft_client_ms']:8.1f} ms")
    print(f"  gateway (SSE)  {result['ttft_gateway_ms']:8.1f} ms  ratio {result['ttft_ratio']:.2f}")
    print(
        f"one reply of {chunks} deltas {chunk_delay * 1000:g} ms apart, "
        f"{streams} open streams each (median per stream):"
    )
    print(
        f"  gateway (SSE)  {result['gateway_events_per_s_per_stream']:8.0f} events/s "
        f"{result['gateway_chars_per_s_per_stream']:9.0f} chars/s"
    )
    print(
        f"  Python client  {result['client_events_per_s_per_stream']:8.0f} events/s "
        f"{result['client_chars_per_s_per_stream']:9.0f} chars/s"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--chunk-delay", type=float, default=0.002)
    parser.add_argument("--streams", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.chunks, args.chunk_delay, args.streams))
