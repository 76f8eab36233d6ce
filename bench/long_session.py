"""Long sessions: 1,000 prompts with 3 tool calls each, and 5,000 idle sessions.

Phase 1 runs one session through `--prompts` prompts (model -> 3 parallel tool
calls -> model) against the scripted server and reports, per prompt 1, 100 and
the last: the bytes of the inference's history and of its largest LLM-step
input, plus the session's continue-as-new count and its history per run, and
the worker's peak memory. Phase 2 creates `--idle` sessions that stay open and
reports the worker's memory before and after (sessions live in Temporal, not
in worker RAM). Prints a table and one JSON line.

    .venv/bin/python bench/long_session.py [--prompts 1000] [--idle 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from geppetto_temporal import EngineBuilder, Session, connect, create_worker
from geppetto_temporal.devserver import EmbeddedServer
from geppetto_temporal.storage import payload_storage
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.tools.examples import calculate, current_time, get_weather

TASK_QUEUE = "geppetto-bench-long"
SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "tools",
            "when": {"last_role": "user"},
            "reply": {
                "text": "Let me look that up.",
                "tool_calls": [
                    {"name": "get_weather", "arguments": {"city": "Paris"}},
                    {"name": "calculate", "arguments": {"expression": "6 * 7"}},
                    {"name": "current_time", "arguments": {"timezone": "UTC"}},
                ],
            },
        },
        {
            "name": "answer",
            "when": {"last_role": "tool"},
            "reply": {"text": "Summary: {tool_results}"},
        },
    ]
}


def rss_mb() -> float:
    """Current resident set size of this process (worker + bench client + model server)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def inference_cost(client: Client, inference_id: str) -> dict[str, int]:
    history = await client.get_workflow_handle(inference_id).fetch_history()
    steps = [
        e.ByteSize()
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "geppetto.llm_step"
    ]
    return {
        "events": len(history.events),
        "bytes": sum(e.ByteSize() for e in history.events),
        "max_llm_step_input_bytes": max(steps),
    }


async def session_runs(client: Client, session_id: str) -> list[dict[str, int]]:
    runs = []
    async for execution in client.list_workflows(f"WorkflowId = '{session_id}'"):
        history = await client.get_workflow_handle(
            session_id, run_id=execution.run_id
        ).fetch_history()
        runs.append(
            {"events": len(history.events), "bytes": sum(e.ByteSize() for e in history.events)}
        )
    return runs


async def long_session(
    client: Client, model: ScriptedModelServer, base_url: str, prompts: int
) -> dict[str, Any]:
    session = await Session.create(
        client,
        EngineBuilder("openai:scripted").base_url(base_url),
        session_id=f"bench-long-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
    )
    marks = sorted({1, min(100, prompts), prompts})
    at: dict[int, dict[str, int]] = {}
    started = time.perf_counter()
    for n in range(1, prompts + 1):
        handle = await session.start_inference(f"prompt {n}: weather, math and time please")
        turn = await handle.wait()
        # The model server records every request body (the whole conversation):
        # drop them so the memory figure is the worker's, not the recorder's.
        model.clear_requests()
        if n in marks:
            at[n] = await inference_cost(client, handle.inference_id)
            at[n]["blocks"] = len(turn.blocks)
            print(f"  at prompt {n}: {json.dumps(at[n])}", file=sys.stderr, flush=True)
        if n % 100 == 0:
            print(
                f"  {n} prompts, {time.perf_counter() - started:.0f}s, rss {rss_mb():.0f} MB",
                file=sys.stderr,
            )
    runs = await session_runs(client, session.session_id)
    return {
        "prompts": prompts,
        "seconds": time.perf_counter() - started,
        "per_prompt": at,
        "continue_as_new": len(runs) - 1,
        "session_runs_max_events": max(r["events"] for r in runs),
        "session_runs_max_bytes": max(r["bytes"] for r in runs),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def idle_sessions(client: Client, base_url: str, count: int) -> dict[str, Any]:
    engine = EngineBuilder("openai:scripted").base_url(base_url)
    before = rss_mb()
    semaphore = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with semaphore:
            await Session.create(
                client,
                engine,
                session_id=f"bench-idle-{i}-{uuid.uuid4().hex[:6]}",
                task_queue=TASK_QUEUE,
            )

    started = time.perf_counter()
    for start in range(0, count, 500):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 500))))
    await asyncio.sleep(2)  # let every session's first workflow task finish
    return {
        "sessions": count,
        "seconds": time.perf_counter() - started,
        "rss_before_mb": before,
        "rss_after_mb": rss_mb(),
    }


async def main(prompts: int, idle: int) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="geppetto-bench-"))
    async with ScriptedModelServer(SCRIPT) as model, EmbeddedServer(data_dir) as server:
        storage = payload_storage(data_dir / "payloads")
        client = await connect(server.address, from_env=False, payload_storage=storage)
        tools = [get_weather, calculate, current_time]
        async with create_worker(
            client, task_queue=TASK_QUEUE, tools=tools, allow_any_base_url=True
        ):
            result: dict[str, Any] = {}
            if prompts:
                result["long_session"] = await long_session(client, model, model.base_url, prompts)
            if idle:
                result["idle"] = await idle_sessions(client, model.base_url, idle)
            return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=5000)
    args = parser.parse_args()
    os.environ.pop("TEMPORAL_ADDRESS", None)
    r = asyncio.run(main(args.prompts, args.idle))
    if "long_session" in r:
        s = r["long_session"]
        print(
            f"{s['prompts']} prompts x 3 tool calls in {s['seconds']:.0f}s; continue-as-new {s['continue_as_new']} times"
        )
        print(
            f"{'at prompt':>10} {'blocks':>8} {'inference events':>17} {'inference bytes':>16} {'max LLM-step input B':>21}"
        )
        for n, c in s["per_prompt"].items():
            print(
                f"{n:>10} {c['blocks']:>8} {c['events']:>17} {c['bytes']:>16} {c['max_llm_step_input_bytes']:>21}"
            )
        print(
            f"session run history: at most {s['session_runs_max_events']} events / {s['session_runs_max_bytes']} B per run"
        )
        print(f"peak RSS (worker + bench + model server): {s['peak_rss_mb']:.0f} MB")
    if "idle" in r:
        i = r["idle"]
        print(
            f"{i['sessions']} idle sessions in {i['seconds']:.0f}s: RSS {i['rss_before_mb']:.0f} MB before, "
            f"{i['rss_after_mb']:.0f} MB after"
        )
    print(json.dumps(r, sort_keys=True))
