"""Orchestration overhead: geppetto-temporal against a plain in-process openai loop.

Both run the same flow against the scripted model server with no added latency:
model -> one tool call -> model. Runs are interleaved so both see the same machine
state. Prints a table and one JSON line.

    .venv/bin/python bench/overhead.py [--runs 40] [--burst 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from temporalio.client import Client

from geppetto_temporal import EngineBuilder, Session, connect, create_worker, search
from geppetto_temporal.devserver import EmbeddedServer
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.tools.examples import get_weather

SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "call",
            "when": {"last_role": "user"},
            "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
        },
        {
            "name": "answer",
            "when": {"last_role": "tool"},
            "reply": {"text": "It is {tool_result_0}."},
        },
    ]
}
TASK_QUEUE = "geppetto-bench"
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": get_weather.description,
            "parameters": get_weather.parameters,
        },
    }
]


async def plain_inference(client: AsyncOpenAI, prompt: str) -> str:
    """The baseline: the same tool loop with the openai client, in process, no durability."""
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
    for _ in range(5):
        stream = await client.chat.completions.create(
            model="scripted",
            messages=messages,
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, calls = "", dict[int, dict[str, str]]()
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    text += choice.delta.content
                for call in choice.delta.tool_calls or ():
                    entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    entry["id"] = call.id or entry["id"]
                    if call.function:
                        entry["name"] += call.function.name or ""
                        entry["arguments"] += call.function.arguments or ""
        if not calls:
            return text
        messages.append(
            {
                "role": "assistant",
                "content": text or None,
                "tool_calls": [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for c in calls.values()
                ],
            }
        )
        for c in calls.values():
            result = get_weather.fn(**json.loads(c["arguments"]))
            messages.append(
                {"role": "tool", "tool_call_id": c["id"], "content": json.dumps(result)}
            )
    raise RuntimeError("loop did not finish")


async def durable_inference(
    client: Client, builder: EngineBuilder, prompt: str, *, lazy: bool = True
) -> str:
    """geppetto-temporal: a new session, one inference with a tool call, wait for the turn.

    `lazy=True` (the default here, and what `geppetto run` does) starts the session
    together with its first prompt (update-with-start).
    """
    session = await Session.create(
        client,
        builder,
        session_id=f"bench-{uuid.uuid4().hex[:12]}",
        task_queue=TASK_QUEUE,
        lazy=lazy,
    )
    turn = await (await session.start_inference(prompt)).wait()
    return turn.last_text


async def next_prompt(session: Session, prompt: str) -> str:
    """geppetto-temporal: one more prompt on an existing session."""
    turn = await (await session.start_inference(prompt)).wait()
    return turn.last_text


async def probe_history(
    client: Client, builder: EngineBuilder, *, search_attributes: bool
) -> tuple[int, int, int, int]:
    """Events and bytes of a new session's history and of its one inference's."""
    probe = await Session.create(
        client,
        builder,
        session_id=f"bench-probe-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
        lazy=True,
        search_attributes=search_attributes,
    )
    handle = await probe.start_inference("weather probe")
    await handle.wait()
    await probe.status()  # returns once the session has recorded the turn
    session_events, session_bytes = await history_cost(client, probe.session_id)
    inference_events, inference_bytes = await history_cost(client, handle.inference_id)
    return session_events, session_bytes, inference_events, inference_bytes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def history_cost(client: Client, workflow_id: str) -> tuple[int, int]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return len(history.events), sum(e.ByteSize() for e in history.events)


async def main(runs: int, burst: int) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="geppetto-bench-"))
    async with (
        ScriptedModelServer(SCRIPT) as model,
        EmbeddedServer(data_dir, search_attributes=search.SEARCH_ATTRIBUTES) as server,
    ):
        client = await connect(server.address)
        builder = EngineBuilder("openai:scripted").base_url(model.base_url)
        openai_client = AsyncOpenAI(base_url=model.base_url, api_key="bench", max_retries=0)
        worker = create_worker(
            client, task_queue=TASK_QUEUE, tools=[get_weather], allow_any_base_url=True
        )
        async with worker:
            # Warm up both paths (imports, connections, workflow caches).
            for _ in range(3):
                await plain_inference(openai_client, "warm up")
                await durable_inference(client, builder, "warm up")
            plain_ms: list[float] = []
            durable_ms: list[float] = []
            eager_ms: list[float] = []
            next_ms: list[float] = []
            session = await Session.create(
                client,
                builder,
                session_id=f"bench-long-{uuid.uuid4().hex[:8]}",
                task_queue=TASK_QUEUE,
            )
            for i in range(runs):
                t0 = time.perf_counter()
                await plain_inference(openai_client, f"weather {i}")
                t1 = time.perf_counter()
                await durable_inference(client, builder, f"weather {i}")
                t2 = time.perf_counter()
                await next_prompt(session, f"weather {i}")
                t3 = time.perf_counter()
                await durable_inference(client, builder, f"weather {i}", lazy=False)
                t4 = time.perf_counter()
                plain_ms.append((t1 - t0) * 1000)
                durable_ms.append((t2 - t1) * 1000)
                next_ms.append((t3 - t2) * 1000)
                eager_ms.append((t4 - t3) * 1000)

            # History cost of one simple inference (new session), both workflows: as
            # the embedded default runs (search attributes kept current), and without
            # them (what the peers' figures compare with: they index nothing).
            (
                session_events,
                session_bytes,
                inference_events,
                inference_bytes,
            ) = await probe_history(client, builder, search_attributes=True)
            bare = await probe_history(client, builder, search_attributes=False)

            # Throughput: `burst` inferences started at once on one worker.
            cpu_before = cpu_seconds(server.pid)
            own_before = time.process_time()
            t0 = time.perf_counter()
            await asyncio.gather(
                *(durable_inference(client, builder, f"burst {i}") for i in range(burst))
            )
            burst_seconds = time.perf_counter() - t0
            server_cpu_ms = (cpu_seconds(server.pid) - cpu_before) * 1000 / burst
            worker_cpu_ms = (time.process_time() - own_before) * 1000 / burst

    plain_median = statistics.median(plain_ms)
    result = {
        "runs": runs,
        "plain_ms": {
            "min": min(plain_ms),
            "median": plain_median,
            "p90": percentile(plain_ms, 0.9),
        },
        "durable_ms": {
            "min": min(durable_ms),
            "median": statistics.median(durable_ms),
            "p90": percentile(durable_ms, 0.9),
        },
        "eager_session_ms": {
            "min": min(eager_ms),
            "median": statistics.median(eager_ms),
            "p90": percentile(eager_ms, 0.9),
        },
        "next_prompt_ms": {
            "min": min(next_ms),
            "median": statistics.median(next_ms),
            "p90": percentile(next_ms, 0.9),
        },
        "ratio_median": statistics.median(durable_ms) / plain_median,
        "ratio_next_prompt_median": statistics.median(next_ms) / plain_median,
        "throughput_per_s": burst / burst_seconds,
        "burst": burst,
        "history": {
            "session_events": session_events,
            "session_bytes": session_bytes,
            "inference_events": inference_events,
            "inference_bytes": inference_bytes,
            "total_bytes": session_bytes + inference_bytes,
            "total_events": session_events + inference_events,
            "without_search_attributes": {
                "total_bytes": bare[1] + bare[3],
                "total_events": bare[0] + bare[2],
            },
        },
        "server_cpu_ms_per_inference": server_cpu_ms,
        "worker_cpu_ms_per_inference": worker_cpu_ms,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "event_stream": True,
    }
    return result


def print_table(r: dict[str, Any]) -> None:
    rows = [
        ("plain openai loop (in process)", r["plain_ms"]),
        ("geppetto: new session + inference", r["durable_ms"]),
        ("  same, session started before prompt", r["eager_session_ms"]),
        ("geppetto: next prompt, same session", r["next_prompt_ms"]),
    ]
    print(f"{'per inference (ms)':40} {'min':>8} {'median':>8} {'p90':>8}")
    for name, v in rows:
        print(f"{name:40} {v['min']:8.1f} {v['median']:8.1f} {v['p90']:8.1f}")
    print(f"ratio (median, new session)  {r['ratio_median']:.1f}x")
    print(f"ratio (median, next prompt)  {r['ratio_next_prompt_median']:.1f}x")
    print(f"throughput ({r['burst']} at once)      {r['throughput_per_s']:.1f} inferences/s")
    h = r["history"]
    print(
        f"history per inference        session {h['session_events']} events / {h['session_bytes']} B, "
        f"inference {h['inference_events']} events / {h['inference_bytes']} B, total {h['total_bytes']} B"
    )
    bare = h["without_search_attributes"]
    print(
        f"  without search attributes  total {bare['total_events']} events / {bare['total_bytes']} B"
    )
    print(f"server CPU per inference     {r['server_cpu_ms_per_inference']:.1f} ms")
    print(
        f"worker+client CPU per inf.   {r['worker_cpu_ms_per_inference']:.1f} ms (incl. model server)"
    )
    print(f"peak RSS (worker + bench)    {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--burst", type=int, default=50)
    args = parser.parse_args()
    os.environ.pop("TEMPORAL_ADDRESS", None)
    outcome = asyncio.run(main(args.runs, args.burst))
    print_table(outcome)
    print(json.dumps(outcome, sort_keys=True))
    sys.exit(0)
