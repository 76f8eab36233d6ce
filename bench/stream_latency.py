"""Delta latency: from the scripted server writing a chunk to a subscriber receiving it.

The scripted server records when it writes each chunk; a partial event that
arrives at time t covers chunks up to its cumulative length, and each of them
gets latency `t - sent(i)`. The same stream read directly with the
openai client in this process is the baseline. Two subscribers watch each
inference: `events()` (live deltas from the worker merged with the durable
stream) and one reading the durable stream only (what a reader gets when the
worker's live channel is off or unreachable: coarse batches). Also counts the
history events the inference adds per 1,000 deltas and per streamed minute.
Prints a table and one JSON line.

    .venv/bin/python bench/stream_latency.py [--chunks 400] [--chunk-delay 0.01] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI

from geppetto_temporal import EngineBuilder, ExecutionHandle, Session, connect, create_worker
from geppetto_temporal._subscribe import follow_inference
from geppetto_temporal.devserver import EmbeddedServer
from geppetto_temporal.events import PartialEvent
from geppetto_temporal.testing import ScriptedModelServer

TASK_QUEUE = "geppetto-bench-stream"
POLL = float(os.environ.get("GEPPETTO_BENCH_POLL", "0.05"))
CHUNK = 4


def script(chunks: int, chunk_delay: float) -> dict[str, Any]:
    text = "".join(f"{i % 10}" * CHUNK for i in range(chunks))
    return {"rules": [{"reply": {"text": text, "chunk_size": CHUNK, "chunk_delay": chunk_delay}}]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def chunk_latencies(arrivals: list[tuple[float, int]], sent: list[float]) -> list[float]:
    """Per-chunk latency (ms) from (arrival time, cumulative characters) pairs."""
    out: list[float] = []
    covered = 0
    for arrived, length in arrivals:
        upto = length // CHUNK
        for i in range(covered, upto):
            out.append((arrived - sent[i]) * 1000)
        covered = upto
    return out


def text_chunk_times(model: ScriptedModelServer, base_url: str, prompt: str) -> list[float]:
    [request] = [r for r in model.requests(base_url) if prompt in json.dumps(r.body)]
    return request.chunk_times[1:]  # the first chunk only announces the assistant role


async def direct(model: ScriptedModelServer, base_url: str, chunk_delay: float) -> list[float]:
    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    prompt = f"direct {uuid.uuid4().hex}"
    stream = await client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": prompt}], stream=True
    )
    arrivals: list[tuple[float, int]] = []
    text = ""
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
                arrivals.append((time.time(), len(text)))
    return chunk_latencies(arrivals, text_chunk_times(model, base_url, prompt))


async def arrivals_of(handle: ExecutionHandle, *, live: bool) -> list[tuple[float, int]]:
    arrivals: list[tuple[float, int]] = []
    events = follow_inference(
        handle.client, handle.inference_id, poll_cooldown=timedelta(seconds=POLL), live=live
    )
    async for event in events:
        if isinstance(event, PartialEvent):
            arrivals.append((time.time(), len(event.completion)))
    return arrivals


async def watched(
    model: ScriptedModelServer, base_url: str, session: Session
) -> tuple[list[float], list[float], str]:
    """Latencies seen by a live subscriber and by a durable-only one of the same inference."""
    prompt = f"watched {uuid.uuid4().hex}"
    handle = await session.start_inference(prompt)
    live, durable, _ = await asyncio.gather(
        arrivals_of(handle, live=True), arrivals_of(handle, live=False), handle.wait()
    )
    sent = text_chunk_times(model, base_url, prompt)
    return chunk_latencies(live, sent), chunk_latencies(durable, sent), handle.inference_id


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(values),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
    }


async def main(
    chunks: int, chunk_delay: float, runs: int, batch: float, durable_batch: float | None
) -> dict[str, Any]:
    async with (
        ScriptedModelServer(script(chunks, chunk_delay)) as model,
        EmbeddedServer(Path(tempfile.mkdtemp(prefix="geppetto-bench-"))) as server,
    ):
        client = await connect(server.address, from_env=False)
        builder = EngineBuilder("openai:scripted").base_url(model.base_url).llm_activity()
        builder = builder.no_tools()
        update: dict[str, Any] = {"stream_batch_seconds": batch}
        if durable_batch is not None:
            update["durable_batch_seconds"] = durable_batch
        spec = builder.build().model_copy(update=update)
        async with create_worker(client, task_queue=TASK_QUEUE, allow_any_base_url=True):
            session = await Session.create(
                client,
                spec,
                session_id=f"bench-stream-{uuid.uuid4().hex[:8]}",
                task_queue=TASK_QUEUE,
            )
            direct_ms: list[float] = []
            live_ms: list[float] = []
            durable_ms: list[float] = []
            events: list[int] = []
            for _ in range(runs):
                direct_ms += await direct(model, model.base_url, chunk_delay)
                live, durable, inference_id = await watched(model, model.base_url, session)
                live_ms += live
                durable_ms += durable
                history = await client.get_workflow_handle(inference_id).fetch_history()
                events.append(len(history.events))
    return {
        "chunks": chunks,
        "chunk_delay_ms": chunk_delay * 1000,
        "batch_ms": batch * 1000,
        "durable_batch_s": spec.durable_batch_seconds,
        "runs": runs,
        "direct_ms": summary(direct_ms),
        "live_ms": summary(live_ms),
        "durable_only_ms": summary(durable_ms),
        "ratio_p50": statistics.median(live_ms) / max(statistics.median(direct_ms), 1e-3),
        "history_events_per_1000_deltas": statistics.median(events) * 1000 / chunks,
        "history_events_per_streamed_minute": statistics.median(events)
        * 60
        / (chunks * chunk_delay),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=400)
    parser.add_argument("--chunk-delay", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=float, default=0.1, help="stream_batch_seconds")
    parser.add_argument(
        "--durable-batch", type=float, default=None, help="durable_batch_seconds (default: spec's)"
    )
    args = parser.parse_args()
    os.environ.pop("TEMPORAL_ADDRESS", None)
    r = asyncio.run(main(args.chunks, args.chunk_delay, args.runs, args.batch, args.durable_batch))
    print(f"{'delta latency (ms)':34} {'p50':>8} {'p95':>8} {'p99':>8}")
    for name, key in (
        ("direct openai stream", "direct_ms"),
        ("geppetto events() (live)", "live_ms"),
        ("durable stream only", "durable_only_ms"),
    ):
        v = r[key]
        print(f"{name:34} {v['p50']:8.1f} {v['p95']:8.1f} {v['p99']:8.1f}")
    print(f"ratio live/direct (p50)            {r['ratio_p50']:.1f}x")
    print(f"history events per 1,000 deltas    {r['history_events_per_1000_deltas']:.0f}")
    print(f"history events per streamed minute {r['history_events_per_streamed_minute']:.0f}")
    print(json.dumps(r, sort_keys=True))
    sys.exit(0)
