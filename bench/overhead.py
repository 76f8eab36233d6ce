"""Orchestration overhead: geppetto-temporal against a plain in-process openai loop and the Temporal floor.

All run the same flow against the scripted model server with no added latency:
model -> one tool call -> model. The **Temporal floor** is a hand-written
workflow (no geppetto code) that runs the same three steps as plain activities:
what any Temporal agent framework must at least pay, and the reference for the
footprint targets. Runs are interleaved so all see the same machine state.
Prints a table and one JSON line.

    .venv/bin/python bench/overhead.py [--runs 40] [--burst 50] [--server-defaults] [--compress]

`--server-defaults` runs a `temporal server start-dev` as a user starts it (in
memory, no dynamic config) instead of the embedded server's tuned one.
`--compress` has geppetto's client and worker compress payloads
(`connect(compress=True)`, as `GEPPETTO_COMPRESS=1` does); the floor never does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from geppetto_temporal import EngineBuilder, Session, connect, create_worker, search
from geppetto_temporal.devserver import EmbeddedServer, find_temporal_binary
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


async def stream_step(
    client: AsyncOpenAI, messages: list[ChatCompletionMessageParam]
) -> tuple[str, list[dict[str, str]]]:
    """One streamed model call: its text and its tool calls (id, name, arguments)."""
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
    return text, list(calls.values())


async def plain_inference(client: AsyncOpenAI, prompt: str) -> str:
    """The baseline: the same tool loop with the openai client, in process, no durability."""
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
    for _ in range(5):
        text, calls = await stream_step(client, messages)
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
                    for c in calls
                ],
            }
        )
        for c in calls:
            result = get_weather.fn(**json.loads(c["arguments"]))
            messages.append(
                {"role": "tool", "tool_call_id": c["id"], "content": json.dumps(result)}
            )
    raise RuntimeError("loop did not finish")


# ---- the Temporal floor: the same three steps as a hand-written workflow ------------------

FLOOR_QUEUE = "geppetto-bench-floor"


class FloorActivities:
    """The model step and the tool as plain activities, with the openai client in process."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client

    @activity.defn(name="floor.llm_step")
    async def llm_step(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        text, calls = await stream_step(
            self.client, cast(list[ChatCompletionMessageParam], messages)
        )
        return {"text": text, "tool_calls": calls}

    @activity.defn(name="floor.get_weather")
    async def tool(self, arguments: str) -> str:
        return json.dumps(get_weather.fn(**json.loads(arguments)))


@workflow.defn(name="FloorAgent")
class FloorWorkflow:
    """What a framework must at least do: model, tool, model, each an activity."""

    @workflow.run
    async def run(self, prompt: str) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        timeout = timedelta(seconds=60)
        for _ in range(5):
            step = await workflow.execute_activity(
                "floor.llm_step", messages, start_to_close_timeout=timeout, result_type=dict
            )
            if not step["tool_calls"]:
                return str(step["text"])
            messages.append(
                {
                    "role": "assistant",
                    "content": step["text"] or None,
                    "tool_calls": [
                        {
                            "id": c["id"],
                            "type": "function",
                            "function": {"name": c["name"], "arguments": c["arguments"]},
                        }
                        for c in step["tool_calls"]
                    ],
                }
            )
            for c in step["tool_calls"]:
                result = await workflow.execute_activity(
                    "floor.get_weather",
                    c["arguments"],
                    start_to_close_timeout=timeout,
                    result_type=str,
                )
                messages.append({"role": "tool", "tool_call_id": c["id"], "content": result})
        raise RuntimeError("loop did not finish")


async def floor_inference(client: Client, prompt: str) -> str:
    result: str = await client.execute_workflow(
        FloorWorkflow.run, prompt, id=f"floor-{uuid.uuid4().hex[:12]}", task_queue=FLOOR_QUEUE
    )
    return result


#: History events that Temporal Cloud bills as actions (heartbeats and queries, which
#: leave no event, are not counted; a local activity counts through its marker).
_BILLED = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    EventType.EVENT_TYPE_TIMER_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED,
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
    EventType.EVENT_TYPE_MARKER_RECORDED,
}


async def footprint(client: Client, workflow_ids: list[str]) -> dict[str, int]:
    """Events, bytes, workflow tasks, activities and billed actions across workflows."""
    out = {"events": 0, "bytes": 0, "workflow_tasks": 0, "activities": 0, "actions": 0}
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        for e in history.events:
            out["events"] += 1
            out["bytes"] += e.ByteSize()
            out["workflow_tasks"] += e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            out["activities"] += e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            if e.event_type in _BILLED:
                # A retried activity is billed again; a marker counts only as a local activity.
                out["actions"] += e.event_type != EventType.EVENT_TYPE_MARKER_RECORDED or (
                    e.marker_recorded_event_attributes.marker_name == "core_local_activity"
                )
    return out


def server_pid(port: int) -> int:
    """The pid of the `temporal server start-dev` listening on `port` (Linux)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"start-dev" in cmdline and f"{port}".encode() in cmdline:
                return int(proc.name)
    raise RuntimeError(f"no dev server on port {port}")


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


@contextlib.asynccontextmanager
async def dev_server(defaults: bool) -> AsyncIterator[tuple[str, int]]:
    """(address, pid) of the server: the embedded one (tuned), or one as a user starts it."""
    if not defaults:
        data_dir = Path(tempfile.mkdtemp(prefix="geppetto-bench-"))
        async with EmbeddedServer(data_dir, search_attributes=search.SEARCH_ATTRIBUTES) as info:
            yield info.address, info.pid
        return
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(find_temporal_binary()),
        ui=False,
        search_attributes=search.ALL_KEYS,
        dev_server_extra_args=["--log-level", "error"],
    )
    try:
        address = env.client.service_client.config.target_host
        yield address, server_pid(int(address.rsplit(":", 1)[1]))
    finally:
        await env.shutdown()


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "p90": percentile(values, 0.9)}


async def burst_run(
    pid: int, n: int, start: Callable[[int], Awaitable[str]]
) -> tuple[float, float]:
    """(inferences per second, server CPU ms per inference) for `n` started at once."""
    cpu_before = cpu_seconds(pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(start(i) for i in range(n)))
    seconds = time.perf_counter() - t0
    return n / seconds, (cpu_seconds(pid) - cpu_before) * 1000 / n


async def main(runs: int, burst: int, server_defaults: bool, compress: bool) -> dict[str, Any]:
    async with ScriptedModelServer(SCRIPT) as model, dev_server(server_defaults) as (address, pid):
        client = await connect(address, compress=compress)
        plain_client = await Client.connect(address)  # the floor: Temporal's own converter
        builder = EngineBuilder("openai:scripted").base_url(model.base_url)
        openai_client = AsyncOpenAI(base_url=model.base_url, api_key="bench", max_retries=0)
        worker = create_worker(
            client, task_queue=TASK_QUEUE, tools=[get_weather], allow_any_base_url=True
        )
        floor_activities = FloorActivities(openai_client)
        floor_worker = Worker(
            plain_client,
            task_queue=FLOOR_QUEUE,
            workflows=[FloorWorkflow],
            activities=[floor_activities.llm_step, floor_activities.tool],
            workflow_runner=UnsandboxedWorkflowRunner(),
        )
        async with worker, floor_worker:
            # Warm up every path (imports, connections, workflow caches).
            for _ in range(3):
                await plain_inference(openai_client, "warm up")
                await floor_inference(plain_client, "warm up")
                await durable_inference(client, builder, "warm up")
            plain_ms: list[float] = []
            floor_ms: list[float] = []
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
                await floor_inference(plain_client, f"weather {i}")
                t2 = time.perf_counter()
                await durable_inference(client, builder, f"weather {i}")
                t3 = time.perf_counter()
                await next_prompt(session, f"weather {i}")
                t4 = time.perf_counter()
                await durable_inference(client, builder, f"weather {i}", lazy=False)
                t5 = time.perf_counter()
                plain_ms.append((t1 - t0) * 1000)
                floor_ms.append((t2 - t1) * 1000)
                durable_ms.append((t3 - t2) * 1000)
                next_ms.append((t4 - t3) * 1000)
                eager_ms.append((t5 - t4) * 1000)

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
            probe = await Session.create(
                client, builder, task_queue=TASK_QUEUE, lazy=True, search_attributes=False
            )
            handle = await probe.start_inference("weather footprint")
            await handle.wait()
            await probe.status()
            ours = await footprint(client, [probe.session_id, handle.inference_id])
            floor_id = f"floor-probe-{uuid.uuid4().hex[:8]}"
            await plain_client.execute_workflow(
                FloorWorkflow.run, "weather footprint", id=floor_id, task_queue=FLOOR_QUEUE
            )
            floor = await footprint(plain_client, [floor_id])

            # Throughput: `burst` inferences started at once on one worker.
            own_before = time.process_time()
            throughput, server_cpu_ms = await burst_run(
                pid, burst, lambda i: durable_inference(client, builder, f"burst {i}")
            )
            worker_cpu_ms = (time.process_time() - own_before) * 1000 / burst
            floor_throughput, floor_cpu_ms = await burst_run(
                pid, burst, lambda i: floor_inference(plain_client, f"burst {i}")
            )

    plain_median = statistics.median(plain_ms)
    floor_median = statistics.median(floor_ms)
    return {
        "runs": runs,
        "server": ("defaults" if server_defaults else "embedded (raised poll rates)")
        + (", compressed payloads" if compress else ""),
        "plain_ms": summary(plain_ms),
        "floor_ms": summary(floor_ms),
        "durable_ms": summary(durable_ms),
        "eager_session_ms": summary(eager_ms),
        "next_prompt_ms": summary(next_ms),
        "ratio_median": statistics.median(durable_ms) / plain_median,
        "ratio_next_prompt_median": statistics.median(next_ms) / plain_median,
        "floor_ratio_median": floor_median / plain_median,
        "vs_floor": {
            "first_prompt": statistics.median(durable_ms) / floor_median,
            "next_prompt": statistics.median(next_ms) / floor_median,
            "throughput": throughput / floor_throughput,
            "server_cpu": server_cpu_ms / floor_cpu_ms,
        },
        "throughput_per_s": throughput,
        "floor_throughput_per_s": floor_throughput,
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
        "footprint": {"geppetto": ours, "floor": floor},
        "server_cpu_ms_per_inference": server_cpu_ms,
        "floor_server_cpu_ms_per_inference": floor_cpu_ms,
        "worker_cpu_ms_per_inference": worker_cpu_ms,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "event_stream": True,
    }


def print_table(r: dict[str, Any]) -> None:
    print(f"server: {r['server']}")
    rows = [
        ("plain openai loop (in process)", r["plain_ms"]),
        ("Temporal floor (hand-written workflow)", r["floor_ms"]),
        ("geppetto: new session + inference", r["durable_ms"]),
        ("  same, session started before prompt", r["eager_session_ms"]),
        ("geppetto: next prompt, same session", r["next_prompt_ms"]),
    ]
    print(f"{'per inference (ms)':40} {'min':>8} {'median':>8} {'p90':>8}")
    for name, v in rows:
        print(f"{name:40} {v['min']:8.1f} {v['median']:8.1f} {v['p90']:8.1f}")
    print(f"ratio (median, new session)  {r['ratio_median']:.1f}x")
    print(f"ratio (median, next prompt)  {r['ratio_next_prompt_median']:.1f}x")
    print(f"floor (median) vs loop       {r['floor_ratio_median']:.1f}x")
    f = r["vs_floor"]
    print(
        f"vs the floor                 first prompt {f['first_prompt']:.2f}x, next prompt "
        f"{f['next_prompt']:.2f}x, throughput {f['throughput']:.2f}x, server CPU {f['server_cpu']:.2f}x"
    )
    print(
        f"throughput ({r['burst']} at once)      {r['throughput_per_s']:.1f} inferences/s "
        f"(floor {r['floor_throughput_per_s']:.1f})"
    )
    for name, fp in r["footprint"].items():
        print(
            f"per prompt, {name:9}         {fp['events']} events / {fp['bytes']} B, "
            f"{fp['workflow_tasks']} workflow tasks, {fp['activities']} activities, "
            f"{fp['actions']} billed actions"
        )
    h = r["history"]
    print(
        f"history per inference        session {h['session_events']} events / {h['session_bytes']} B, "
        f"inference {h['inference_events']} events / {h['inference_bytes']} B, total {h['total_bytes']} B"
    )
    bare = h["without_search_attributes"]
    print(
        f"  without search attributes  total {bare['total_events']} events / {bare['total_bytes']} B"
    )
    print(
        f"server CPU per inference     {r['server_cpu_ms_per_inference']:.1f} ms "
        f"(floor {r['floor_server_cpu_ms_per_inference']:.1f} ms)"
    )
    print(
        f"worker+client CPU per inf.   {r['worker_cpu_ms_per_inference']:.1f} ms (incl. model server)"
    )
    print(f"peak RSS (worker + bench)    {r['peak_rss_mb']:.0f} MB")
    print("targets (the footprint issue, against the floor of this run):")
    for line in targets(r):
        print(f"  {line}")


def targets(r: dict[str, Any]) -> list[str]:
    """Each footprint target for this run's server mode, as met or not, with the figure."""

    def mark(ok: bool) -> str:
        return "met    " if ok else "NOT met"

    # A simple prompt, both workflows, as the README's table and the budget test count it.
    f, h = r["vs_floor"], r["footprint"]["geppetto"]
    if r["server"] == "defaults":
        return [
            f"{mark(f[k] <= 1.3)} {k.replace('_', ' ')} latency <= 1.3x the floor: {f[k]:.2f}x"
            for k in ("first_prompt", "next_prompt")
        ]
    return [
        *(
            f"{mark(f[k] <= 1.1)} {k.replace('_', ' ')} latency <= 1.1x the floor: {f[k]:.2f}x"
            for k in ("first_prompt", "next_prompt")
        ),
        f"{mark(f['throughput'] >= 0.9)} throughput >= 0.9x the floor's: {f['throughput']:.2f}x",
        f"{mark(f['server_cpu'] <= 1.2)} server CPU <= 1.2x the floor's: {f['server_cpu']:.2f}x",
        f"{mark(h['events'] <= 30)} <= 30 history events per prompt: {h['events']}",
        f"{mark(h['bytes'] <= 6_800)} <= 6,800 history bytes per prompt: {h['bytes']}",
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument(
        "--server-defaults",
        action="store_true",
        help="a dev server with its default settings, as `temporal server start-dev` starts",
    )
    parser.add_argument(
        "--compress", action="store_true", help="geppetto compresses payloads (GEPPETTO_COMPRESS)"
    )
    args = parser.parse_args()
    os.environ.pop("TEMPORAL_ADDRESS", None)
    os.environ.pop("GEPPETTO_COMPRESS", None)
    outcome = asyncio.run(main(args.runs, args.burst, args.server_defaults, args.compress))
    print_table(outcome)
    print(json.dumps(outcome, sort_keys=True))
    sys.exit(0)
