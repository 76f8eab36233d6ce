"""Where the time of one prompt goes: median segment durations from history event times.

Runs `--runs` prompts, each on a new session (update-with-start, as `geppetto run`
does), through the bench's flow (model -> one tool -> model) on the embedded dev
server, then reads both workflows' histories. Client, worker and server share
this machine's clock, so client-side moments can be placed among the events.
The Temporal floor (bench/overhead.py's hand-written workflow) runs interleaved
on the same server, and its segments are printed after ours.

    .venv/bin/python bench/timeline.py [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openai import AsyncOpenAI
from overhead import FLOOR_QUEUE, SCRIPT, TASK_QUEUE, FloorActivities, FloorWorkflow

from geppetto_temporal import EngineBuilder, Session, connect, create_worker, search
from geppetto_temporal.devserver import EmbeddedServer
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.tools.examples import get_weather

E = EventType


def ts(event: HistoryEvent) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


async def events_of(client: Client, workflow_id: str) -> list[HistoryEvent]:
    return list((await client.get_workflow_handle(workflow_id).fetch_history()).events)


def segments(
    sent: float,
    accepted: float,
    done: float,
    session: list[HistoryEvent],
    child: list[HistoryEvent],
) -> list[tuple[str, float]]:
    """(name, seconds) in critical-path order for one prompt."""
    out: list[tuple[str, float]] = []
    s = {e.event_type: e for e in session}  # the types looked up here occur once
    first = session[0]
    out.append(("client -> session started", ts(first) - sent))
    tasks = [e for e in session if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED]
    started = [e for e in session if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_STARTED]
    completed = [e for e in session if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
    out.append(("session task 1: dispatch", ts(started[0]) - ts(tasks[0])))
    out.append(("session task 1: worker", ts(completed[0]) - ts(started[0])))
    initiated = s[E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED]
    out.append(("child start", ts(child[0]) - ts(initiated)))
    prev = ts(child[0])
    step = 0
    for e in child:
        t = ts(e)
        if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            out.append((f"child: before task {step + 1}", t - prev))
        elif e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            out.append((f"child task {step + 1}: dispatch", t - prev))
        elif e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            step += 1
            out.append((f"child task {step}: worker", t - prev))
        elif e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            out.append((f"child: LLM step after task {step}", t - prev))
        else:
            continue
        prev = t
    child_done = ts(child[-1])
    out.append(("child done -> wait() returns the turn", done - child_done))
    out.append(("TOTAL", done - sent))
    # Off the critical path: the update's answer, and the session recording the turn.
    out.append(("(start_inference returned, from start)", accepted - sent))
    recorded = next(
        e for e in session if e.event_type == E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED
    )
    after = [e for e in session if e.event_id > recorded.event_id]
    out.append(("(session records the turn, from child done)", ts(after[2]) - child_done))
    return out


def floor_segments(sent: float, done: float, events: list[HistoryEvent]) -> list[tuple[str, float]]:
    """(name, seconds) of one run of the floor workflow: tasks and activities in turn."""
    out: list[tuple[str, float]] = [("floor: client -> started", ts(events[0]) - sent)]
    prev, task = ts(events[0]), 0
    for e in events:
        t = ts(e)
        if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            out.append((f"floor task {task + 1}: dispatch", t - prev))
        elif e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            task += 1
            out.append((f"floor task {task}: worker", t - prev))
        elif e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            out.append((f"floor: activity after task {task}", t - prev))
        else:
            continue
        prev = t
    out.append(("floor: done -> client has the result", done - ts(events[-1])))
    out.append(("floor TOTAL", done - sent))
    return out


async def main(runs: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="geppetto-timeline-"))
    table: dict[str, list[float]] = defaultdict(list)
    order: list[str] = []
    async with (
        ScriptedModelServer(SCRIPT) as model,
        EmbeddedServer(data_dir, search_attributes=search.SEARCH_ATTRIBUTES) as server,
    ):
        client = await connect(server.address)
        plain = await Client.connect(server.address)
        builder = EngineBuilder("openai:scripted").base_url(model.base_url)
        floor = FloorActivities(AsyncOpenAI(base_url=model.base_url, api_key="bench"))
        async with (
            create_worker(
                client, task_queue=TASK_QUEUE, tools=[get_weather], allow_any_base_url=True
            ),
            Worker(
                plain,
                task_queue=FLOOR_QUEUE,
                workflows=[FloorWorkflow],
                activities=[floor.llm_step, floor.tool],
                workflow_runner=UnsandboxedWorkflowRunner(),
            ),
        ):
            for i in range(runs + 3):
                floor_id = f"timeline-floor-{uuid.uuid4().hex[:10]}"
                floor_sent = time.time()
                await plain.execute_workflow(
                    FloorWorkflow.run, f"weather {i}", id=floor_id, task_queue=FLOOR_QUEUE
                )
                floor_done = time.time()
                session = await Session.create(
                    client,
                    builder,
                    session_id=f"timeline-{uuid.uuid4().hex[:10]}",
                    task_queue=TASK_QUEUE,
                    lazy=True,
                )
                sent = time.time()
                handle = await session.start_inference(f"weather {i}")
                accepted = time.time()
                await handle.wait()
                done = time.time()
                await session.status()  # until the session has recorded the turn
                if i < 3:
                    continue  # warm-up
                parts = segments(
                    sent,
                    accepted,
                    done,
                    await events_of(client, session.session_id),
                    await events_of(client, handle.inference_id),
                ) + floor_segments(floor_sent, floor_done, await events_of(plain, floor_id))
                for name, seconds in parts:
                    if name not in table:
                        order.append(name)
                    table[name].append(seconds * 1000)
    print(f"{'segment (critical path, ms)':44} {'median':>8} {'p90':>8}")
    for name in order:
        values = sorted(table[name])
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        print(f"{name:44} {statistics.median(values):8.1f} {p90:8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    os.environ.pop("TEMPORAL_ADDRESS", None)
    asyncio.run(main(args.runs))
