"""Cancel latency: from `handle.cancel()` to the model's HTTP stream closing, or to the tool stopping.

For each provider (OpenAI Chat Completions, OpenAI Responses, Anthropic Messages, all
spoken by the scripted server) an inference streams a long reply; once the first
`partial` event has arrived, the bench calls `handle.cancel()` and measures

* disconnect: until the scripted server notices the client hung up (it records the
  time; it looks before each chunk, so within one chunk delay, 10 ms by default);
* wait(): until `handle.wait()` raises `InferenceCancelled` with the partial turn.

During a tool call (a slow tool activity, after it has started) it measures the time
until the tool's coroutine sees `CancelledError`, for `handle.cancel()` and for
`session.cancel_active()`. Each cancel comes a random 0 to `--jitter` seconds after the
first partial event (or the tool's start): an activity hears of a cancel only in the answer to
a heartbeat, so the latency depends on where in the heartbeat cycle the cancel falls, and a
fixed moment would measure one point of that cycle. The baselines, in the same run: the same stream read with
the openai SDK in this process and closed by hand (`stream.close()`), and the same
tool coroutine as an asyncio task cancelled by hand. Cases take turns, run by run.
Prints a table (p50, p95, max in ms) and one JSON line.

    .venv/bin/python bench/cancel_latency.py [--runs 30] [--chunk-delay 0.01] [--jitter 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI

from geppetto_temporal import (
    EngineBuilder,
    ExecutionHandle,
    InferenceCancelled,
    Session,
    ToolContext,
    connect,
    create_worker,
    tool,
)
from geppetto_temporal.devserver import EmbeddedServer
from geppetto_temporal.events import PartialEvent
from geppetto_temporal.testing import RecordedRequest, ScriptedModelServer

TASK_QUEUE = "geppetto-bench-cancel"
POLL = 0.05
#: Long enough that a stream is never over before the cancel (30 s at 10 ms a chunk).
CHUNKS = 3000

#: (spec prefix, what the SDK's base URL adds to the server's root)
PROVIDERS = [("openai", "/v1"), ("openai-responses", "/v1"), ("anthropic", "")]

#: Per inference id (or baseline key): when the bench tool started, when it saw the cancel.
TOOL_STARTED: dict[str, float] = {}
TOOL_CANCELLED: dict[str, float] = {}

JITTER = 1.0
_rng = random.Random(17)


async def jitter() -> None:
    await asyncio.sleep(_rng.uniform(0, JITTER))


async def _sleep_until_cancelled(key: str, seconds: float) -> dict[str, float]:
    TOOL_STARTED[key] = time.time()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        TOOL_CANCELLED[key] = time.time()
        raise
    return {"slept": seconds}


@tool(timeout=120)
async def bench_slow_tool(ctx: ToolContext, seconds: float) -> dict[str, float]:
    """Sleeps; records when it started and when it saw its cancellation."""
    return await _sleep_until_cancelled(ctx.inference_id, seconds)


def script(chunk_delay: float) -> dict[str, Any]:
    story = "".join(f"{i % 10}" * 4 for i in range(CHUNKS))
    return {
        "rules": [
            {
                "name": "tool",
                "when": {"last_role": "user", "last_user_contains": "tool"},
                "reply": {
                    "tool_calls": [{"name": "bench_slow_tool", "arguments": {"seconds": 60}}]
                },
            },
            {"name": "after-tool", "when": {"last_role": "tool"}, "reply": {"text": "done"}},
            {
                "name": "story",
                "reply": {"text": story, "chunk_size": 4, "chunk_delay": chunk_delay},
            },
        ]
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def request_with(model: ScriptedModelServer, prompt: str) -> RecordedRequest:
    [request] = [r for r in model.requests() if prompt in json.dumps(r.body)]
    return request


async def until(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.005)


async def disconnect_ms(model: ScriptedModelServer, prompt: str, t0: float) -> float:
    def noticed() -> bool:
        return request_with(model, prompt).finished_at is not None

    await until(noticed)
    request = request_with(model, prompt)
    if request.outcome != "client_disconnected" or request.finished_at is None:
        raise RuntimeError(f"the stream was not cut by the cancel: {request.outcome}")
    return (request.finished_at - t0) * 1000


async def wait_cancelled_ms(handle: ExecutionHandle, t0: float) -> float:
    try:
        await handle.wait()
    except InferenceCancelled:
        return (time.time() - t0) * 1000
    raise RuntimeError(f"{handle.inference_id} was not cancelled")


async def first_partial(handle: ExecutionHandle) -> None:
    async for event in handle.events(poll_interval=POLL):
        if isinstance(event, PartialEvent):
            return


async def direct_stream(model: ScriptedModelServer) -> dict[str, float]:
    client = AsyncOpenAI(base_url=model.base_url, api_key="bench", max_retries=0)
    prompt = f"direct story {uuid.uuid4().hex}"
    stream = await client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": prompt}], stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await jitter()
    t0 = time.time()
    await stream.close()
    closed = (time.time() - t0) * 1000
    result = {"disconnect": await disconnect_ms(model, prompt, t0), "wait": closed}
    await client.close()
    return result


async def durable_stream(model: ScriptedModelServer, session: Session) -> dict[str, float]:
    prompt = f"story {uuid.uuid4().hex}"
    handle = await session.start_inference(prompt)
    await first_partial(handle)
    await jitter()
    t0 = time.time()
    await handle.cancel()
    waited = await wait_cancelled_ms(handle, t0)
    return {"disconnect": await disconnect_ms(model, prompt, t0), "wait": waited}


async def direct_tool() -> dict[str, float]:
    key = f"direct-{uuid.uuid4().hex}"
    task = asyncio.create_task(_sleep_until_cancelled(key, 60))
    await until(lambda: key in TOOL_STARTED)
    await jitter()
    t0 = time.time()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return {"tool": (TOOL_CANCELLED[key] - t0) * 1000, "wait": (time.time() - t0) * 1000}


async def durable_tool(session: Session, via_session: bool) -> dict[str, float]:
    handle = await session.start_inference(f"tool {uuid.uuid4().hex}")
    key = handle.inference_id
    await until(lambda: key in TOOL_STARTED)
    await jitter()
    t0 = time.time()
    if via_session:
        await session.cancel_active()
    else:
        await handle.cancel()
    waited = await wait_cancelled_ms(handle, t0)
    await until(lambda: key in TOOL_CANCELLED)
    return {"tool": (TOOL_CANCELLED[key] - t0) * 1000, "wait": waited}


Case = Callable[[], Awaitable[dict[str, float]]]


async def main(runs: int, chunk_delay: float) -> dict[str, Any]:
    async with (
        ScriptedModelServer(script(chunk_delay)) as model,
        EmbeddedServer(Path(tempfile.mkdtemp(prefix="geppetto-bench-"))) as server,
    ):
        client = await connect(server.address, from_env=False)
        async with create_worker(
            client, task_queue=TASK_QUEUE, tools=[bench_slow_tool], allow_any_base_url=True
        ):

            async def session_for(prefix: str, suffix: str) -> Session:
                builder = EngineBuilder(f"{prefix}:scripted").base_url(model.url + suffix)
                return await Session.create(
                    client,
                    builder,
                    session_id=f"bench-cancel-{prefix}-{uuid.uuid4().hex[:8]}",
                    task_queue=TASK_QUEUE,
                )

            cases: dict[str, Case] = {
                "direct openai stream, stream.close()": lambda: direct_stream(model)
            }
            for prefix, suffix in PROVIDERS:
                session = await session_for(prefix, suffix)
                cases[f"{prefix} stream, handle.cancel()"] = functools.partial(
                    durable_stream, model, session
                )
            cases["direct tool task, task.cancel()"] = direct_tool
            tool_session = await session_for("openai", "/v1")
            cases["tool activity, handle.cancel()"] = lambda: durable_tool(tool_session, False)
            cases["tool activity, session.cancel_active()"] = lambda: durable_tool(
                tool_session, True
            )

            samples: dict[str, dict[str, list[float]]] = {name: {} for name in cases}
            for _ in range(runs):
                for name, case in cases.items():
                    for metric, value in (await case()).items():
                        samples[name].setdefault(metric, []).append(value)
                model.clear_requests()
    results: dict[str, Any] = {}
    for name, metrics in samples.items():
        results[name] = {
            metric: {
                "p50": statistics.median(values),
                "p95": percentile(values, 0.95),
                "max": max(values),
            }
            for metric, values in metrics.items()
        }
    return {
        "runs": runs,
        "chunk_delay_ms": chunk_delay * 1000,
        "jitter_s": JITTER,
        "cases": results,
    }


def show(r: dict[str, Any]) -> None:
    print(
        f"cancel latency, ms ({r['runs']} runs; chunk delay {r['chunk_delay_ms']:g} ms; "
        f"cancel 0-{r['jitter_s']:g} s after the first delta or the tool's start)"
    )
    print(f"{'case':42} {'stopped p50':>11} {'p95':>7} {'max':>7} {'wait p50':>9} {'p95':>7}")
    for name, metrics in r["cases"].items():
        stopped = metrics.get("disconnect") or metrics["tool"]
        waited = metrics["wait"]
        print(
            f"{name:42} {stopped['p50']:11.1f} {stopped['p95']:7.1f} {stopped['max']:7.1f} "
            f"{waited['p50']:9.1f} {waited['p95']:7.1f}"
        )
    print("stopped: the server saw the disconnect, or the tool saw CancelledError;")
    print("wait: wait() raised InferenceCancelled (direct rows: close()/cancel returned)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--chunk-delay", type=float, default=0.01)
    parser.add_argument("--jitter", type=float, default=1.0, help="max seconds before a cancel")
    args = parser.parse_args()
    JITTER = args.jitter
    os.environ.pop("TEMPORAL_ADDRESS", None)
    # A tool cancelled this way ends after its inference has (the workflow does not wait for
    # it), and the SDK logs each such end with a traceback: expected here, and noise.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    result = asyncio.run(main(args.runs, args.chunk_delay))
    show(result)
    print(json.dumps(result, sort_keys=True))
    sys.exit(0)
