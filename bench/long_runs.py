"""Long runs: what streaming, long tool loops and worker crashes cost an inference.

One command, everything on an embedded dev server of its own and the scripted
model, measured against the targets of the "long runs" issue:

- history events per streamed minute of one reply with 0, 1 and 3 subscribers
  (target: <= 60 whatever the subscriber count), and delta latency p50/p95
  from the model server to the first subscriber (target: p50 < 100 ms), with
  a direct `openai` stream read in the same run as the baseline;
- for tool loops of N steps (the scripted model calls a tool at every step and
  `max_iterations` ends it): events and bytes of the largest workflow run
  (target: no run over 10,240 events), and wall time per step at step 10
  against the last steps (target: within 1.2x);
- recovery after SIGKILL of the worker running a streaming LLM step or a tool,
  with a spare worker already polling (target: <= 5 s): from the kill to the
  retry's start on the spare, read from Temporal.

    .venv/bin/python bench/long_runs.py [--stream-seconds 30] [--steps 100,1000,2000] [--trials 3]

Prints a table and one JSON line. Timing figures vary with the machine's load;
event and byte counts do not.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client

from geppetto_temporal import (
    EngineBuilder,
    MaxIterationsReached,
    Session,
    connect,
    create_worker,
    tool,
)
from geppetto_temporal.devserver import EmbeddedServer
from geppetto_temporal.events import Event, PartialEvent
from geppetto_temporal.testing import ScriptedModelServer

REPO = Path(__file__).resolve().parent.parent
TASK_QUEUE = "geppetto-bench-long"
CHUNK = 4
CHUNK_DELAY = 0.02
HISTORY_RUN_TARGET = 10_240


@tool
def step(n: int) -> dict[str, int]:
    """One step of a long agent run."""
    return {"n": n}


def stream_script(seconds: float) -> dict[str, Any]:
    chunks = int(seconds / CHUNK_DELAY)
    text = "".join(f"{i % 10}" * CHUNK for i in range(chunks))
    return {"rules": [{"reply": {"text": text, "chunk_size": CHUNK, "chunk_delay": CHUNK_DELAY}}]}


#: A model that calls `step` at every turn of the loop, forever.
LOOP_SCRIPT = {
    "rules": [{"name": "loop", "reply": {"tool_calls": [{"name": "step", "arguments": {"n": 1}}]}}]
}
#: For recovery: a long stream, and a tool that sleeps.
SLOW_STREAM = stream_script(20)
SLOW_TOOL = {
    "rules": [
        {
            "when": {"last_role": "user"},
            "reply": {"tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 20}}]},
        },
        {"when": {"last_role": "tool"}, "reply": {"text": "done"}},
    ]
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def history_of(client: Client, workflow_id: str) -> tuple[int, int]:
    """Events and bytes of a workflow's latest run."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return len(history.events), sum(e.ByteSize() for e in history.events)


# ---- streaming -----------------------------------------------------------------------------


def latencies(arrivals: list[tuple[float, int]], sent: list[float]) -> list[float]:
    out: list[float] = []
    covered = 0
    for arrived, length in arrivals:
        upto = min(length // CHUNK, len(sent))
        out += [(arrived - sent[i]) * 1000 for i in range(covered, upto)]
        covered = max(covered, upto)
    return out


def chunk_times(model: ScriptedModelServer, base_url: str, marker: str) -> list[float]:
    [request] = [r for r in model.requests(base_url) if marker in json.dumps(r.body)]
    return request.chunk_times[1:]  # the first chunk only announces the assistant role


async def direct_stream(model: ScriptedModelServer, base_url: str) -> list[float]:
    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    marker = f"direct {uuid.uuid4().hex}"
    stream = await client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": marker}], stream=True
    )
    arrivals: list[tuple[float, int]] = []
    text = ""
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
                arrivals.append((time.time(), len(text)))
    await client.close()
    return latencies(arrivals, chunk_times(model, base_url, marker))


async def streamed(
    client: Client, model: ScriptedModelServer, seconds: float, subscribers: int
) -> dict[str, Any]:
    base_url = model.add_script(stream_script(seconds))
    session = await Session.create(
        client,
        EngineBuilder("openai:scripted").base_url(base_url).no_tools(),
        task_queue=TASK_QUEUE,
    )
    marker = f"stream {uuid.uuid4().hex}"
    started = time.monotonic()
    handle = await session.start_inference(marker)
    arrivals: list[tuple[float, int]] = []

    async def watch(record: bool) -> None:
        event: Event
        async for event in handle.events():
            if record and isinstance(event, PartialEvent):
                arrivals.append((time.time(), len(event.completion)))

    await asyncio.gather(handle.wait(), *(watch(i == 0) for i in range(subscribers)))
    wall = time.monotonic() - started
    events, size = await history_of(client, handle.inference_id)
    result: dict[str, Any] = {
        "subscribers": subscribers,
        "streamed_seconds": round(wall, 1),
        "history_events": events,
        "history_bytes": size,
        "events_per_streamed_minute": round(events * 60 / seconds, 1),
    }
    if subscribers:
        ms = latencies(arrivals, chunk_times(model, base_url, marker))
        result["delta_ms"] = {"p50": statistics.median(ms), "p95": percentile(ms, 0.95)}
    return result


# ---- tool loops ----------------------------------------------------------------------------


async def tool_loop(client: Client, model: ScriptedModelServer, steps: int) -> dict[str, Any]:
    base_url = model.add_script(LOOP_SCRIPT)
    engine = EngineBuilder("openai:scripted").base_url(base_url).max_iterations(steps)
    session = await Session.create(client, engine.tools("step"), task_queue=TASK_QUEUE)
    started = time.monotonic()
    handle = await session.start_inference(f"loop {steps}")
    # A subscriber follows the whole loop, across the inference's runs.
    seen: list[Event] = []

    async def subscribe() -> None:
        async for event in handle.events():
            seen.append(event)

    subscriber = asyncio.create_task(subscribe())
    try:
        await handle.wait()
    except MaxIterationsReached:
        pass
    wall = time.monotonic() - started
    await asyncio.wait_for(subscriber, 120)
    runs: list[tuple[int, int]] = []
    scheduled: list[float] = []
    activity_ms: list[tuple[float, float]] = []
    async for execution in client.list_workflows(f"WorkflowId = '{handle.inference_id}'"):
        history = await client.get_workflow_handle(
            handle.inference_id, run_id=execution.run_id
        ).fetch_history()
        runs.append((len(history.events), sum(e.ByteSize() for e in history.events)))
        # Step k starts when its LLM step is scheduled; a step's time is the gap to the next one.
        llm = {
            e.event_id: e.event_time.ToMicroseconds() / 1e6
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name == "geppetto.llm_step"
        }
        scheduled += llm.values()
        # How long each LLM activity ran (it calls the model with the whole conversation).
        began = {
            e.activity_task_started_event_attributes.scheduled_event_id: (
                e.event_time.ToMicroseconds() / 1e6
            )
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
            and e.activity_task_started_event_attributes.scheduled_event_id in llm
        }
        for e in history.events:
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                sid = e.activity_task_completed_event_attributes.scheduled_event_id
                if sid in began:
                    ms = (e.event_time.ToMicroseconds() / 1e6 - began[sid]) * 1000
                    activity_ms.append((llm[sid], ms))
    scheduled.sort()
    in_activity = [ms for _, ms in sorted(activity_ms)]
    gaps = [b - a for a, b in itertools.pairwise(scheduled)]
    early = statistics.mean(gaps[5:15]) if len(gaps) >= 15 else statistics.mean(gaps)
    late = statistics.mean(gaps[-10:])
    # What the model is sent grows with the loop (every earlier call and result, each step):
    # the request body of the last step against step 10, to tell the model's share apart.
    bodies = [len(json.dumps(r.body)) for r in model.requests(base_url)]
    return {
        "steps": steps,
        "wall_seconds": round(wall, 1),
        "runs": len(runs),
        "largest_run_events": max(e for e, _ in runs),
        "largest_run_bytes": max(b for _, b in runs),
        "total_events": sum(e for e, _ in runs),
        "total_bytes": sum(b for _, b in runs),
        "subscriber_events": len(seen),
        "subscriber_saw_the_end": bool(seen) and seen[-1].type == "inference-finished",
        "step_ms_at_10": round(early * 1000, 1),
        "step_ms_at_end": round(late * 1000, 1),
        "end_vs_10": round(late / early, 2),
        "llm_activity_ms_at_10": round(statistics.mean(in_activity[5:15] or in_activity), 1),
        "llm_activity_ms_at_end": round(statistics.mean(in_activity[-10:]), 1),
        "request_kb_at_10": round(bodies[min(9, len(bodies) - 1)] / 1024, 1),
        "request_kb_at_end": round(bodies[-1] / 1024, 1),
    }


# ---- recovery ------------------------------------------------------------------------------


class Workers:
    """`geppetto worker` processes on the bench's server; SIGKILL is a crashed host."""

    def __init__(self, address: str, logs: Path) -> None:
        self.address, self.logs = address, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "OPENAI_"))}
        env.update(TEMPORAL_ADDRESS=self.address, PYTHONUNBUFFERED="1")
        log = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
        geppetto = Path(sys.executable).with_name("geppetto")
        proc = subprocess.Popen(
            [
                str(geppetto),
                "worker",
                "--task-queue",
                f"{TASK_QUEUE}-crash",
                "--tools",
                "tests.toolbox",
                "--allow-any-base-url",
            ],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def owner(self, identity: str) -> subprocess.Popen[bytes]:
        [proc] = [p for p in self.procs if identity.startswith(f"{p.pid}@")]
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def running_activity(client: Client, workflow_id: str, attempt: int) -> tuple[str, float]:
    """(worker identity, time seen) once the inference's activity runs its `attempt`."""
    handle = client.get_workflow_handle(workflow_id)
    while True:
        for pending in (await handle.describe()).raw_description.pending_activities:
            if (
                pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                and pending.attempt >= attempt
            ):
                return pending.last_worker_identity, time.monotonic()
        await asyncio.sleep(0.02)


async def recovery(
    client: Client, model: ScriptedModelServer, workers: Workers, what: str
) -> float:
    script = SLOW_STREAM if what == "stream" else SLOW_TOOL
    engine = EngineBuilder("openai:scripted").base_url(model.add_script(script))
    session = await Session.create(client, engine, task_queue=f"{TASK_QUEUE}-crash")
    handle = await session.start_inference(f"crash {what} {uuid.uuid4().hex[:6]}")
    if what == "tool":  # wait past the LLM step, until the tool runs
        async for event in handle.events():
            if event.type == "tool-call-execute":
                break
    identity, _ = await running_activity(client, handle.inference_id, 1)
    await asyncio.sleep(1.0)  # well into the stream or the tool
    victim = workers.owner(identity)
    os.killpg(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    victim.wait()
    _, resumed = await running_activity(client, handle.inference_id, 2)
    await handle.cancel()
    workers.spawn()  # a spare again for the next trial
    return resumed - killed


# ---- main ----------------------------------------------------------------------------------


async def main(stream_seconds: float, steps: list[int], trials: int) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="geppetto-bench-long-"))
    out: dict[str, Any] = {}
    async with ScriptedModelServer() as model, EmbeddedServer(data_dir) as server:
        client = await connect(server.address, from_env=False)
        async with create_worker(
            client, task_queue=TASK_QUEUE, tools=[step], allow_any_base_url=True
        ):
            direct = await direct_stream(model, model.add_script(stream_script(3)))
            out["direct_delta_ms"] = {
                "p50": statistics.median(direct),
                "p95": percentile(direct, 0.95),
            }
            out["streaming"] = [await streamed(client, model, stream_seconds, n) for n in (0, 1, 3)]
            out["tool_loops"] = [await tool_loop(client, model, n) for n in steps]
        if trials:
            workers = Workers(server.address, data_dir)
            try:
                for _ in range(2):
                    workers.spawn()
                await asyncio.sleep(3)  # both polling
                out["recovery_seconds"] = {
                    what: [
                        round(await recovery(client, model, workers, what), 2)
                        for _ in range(trials)
                    ]
                    for what in ("stream", "tool")
                }
            finally:
                workers.stop()
    return out


def report(r: dict[str, Any]) -> None:
    print(f"{'streaming, one reply':40} {'events/min':>11} {'p50 ms':>8} {'p95 ms':>8}")
    d = r["direct_delta_ms"]
    print(f"{'  direct openai stream (baseline)':40} {'-':>11} {d['p50']:8.1f} {d['p95']:8.1f}")
    for s in r["streaming"]:
        lat = s.get("delta_ms", {})
        print(
            f"{'  ' + str(s['subscribers']) + ' subscriber(s)':40} "
            f"{s['events_per_streamed_minute']:11.0f} "
            f"{lat.get('p50', float('nan')):8.1f} {lat.get('p95', float('nan')):8.1f}"
        )
    print(
        f"{'tool loop':16} {'runs':>5} {'largest run':>24} {'ms/step @10':>12} {'@end':>8}"
        f" {'request KB @10':>15} {'@end':>8}"
    )
    for t in r["tool_loops"]:
        print(
            f"  {t['steps']:>5} steps   {t['runs']:>5} "
            f"{t['largest_run_events']:>9} ev {t['largest_run_bytes'] / 1e6:8.2f} MB "
            f"{t['step_ms_at_10']:12.1f} {t['step_ms_at_end']:8.1f}"
            f" {t['request_kb_at_10']:15.1f} {t['request_kb_at_end']:8.1f}"
        )
    for what, values in r.get("recovery_seconds", {}).items():
        print(f"recovery after SIGKILL mid-{what} (spare worker): {values} s")
    print("targets:")
    for line in targets(r):
        print(f"  {line}")
    print(json.dumps(r, sort_keys=True))


def targets(r: dict[str, Any]) -> list[str]:
    """Each target of the long-runs issue, as met or not, with the figure."""

    def mark(ok: bool) -> str:
        return "met    " if ok else "NOT met"

    lines: list[str] = []
    for s in r.get("streaming", []):
        per_min = s["events_per_streamed_minute"]
        lines.append(
            f"{mark(per_min <= 60)} <= 60 history events per streamed minute, "
            f"{s['subscribers']} subscriber(s): {per_min:.0f}"
        )
        if "delta_ms" in s:
            p50 = s["delta_ms"]["p50"]
            lines.append(f"{mark(p50 < 100)} delta latency p50 < 100 ms: {p50:.0f} ms")
    for t in r.get("tool_loops", []):
        lines.append(
            f"{mark(t['largest_run_events'] <= 10_240 and t['subscriber_saw_the_end'])} "
            f"{t['steps']} steps with a subscriber, no run over 10,240 events: "
            f"largest {t['largest_run_events']} in {t['runs']} run(s)"
        )
        lines.append(
            f"{mark(t['end_vs_10'] <= 1.2)} {t['steps']} steps, per-step time at the end "
            f"<= 1.2x step 10: {t['end_vs_10']}x (the LLM activity took "
            f"{t['llm_activity_ms_at_10']:.0f} -> {t['llm_activity_ms_at_end']:.0f} ms, its "
            f"request grew {t['request_kb_at_10']:.0f} -> {t['request_kb_at_end']:.0f} KB)"
        )
    for what, values in r.get("recovery_seconds", {}).items():
        lines.append(f"{mark(max(values) <= 5)} recovery mid-{what} <= 5 s: max {max(values)} s")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stream-seconds", type=float, default=30.0)
    parser.add_argument(
        "--steps", default="100,1000,2000", help="tool-loop lengths, comma-separated"
    )
    parser.add_argument("--trials", type=int, default=3, help="SIGKILL trials per point (0: skip)")
    args = parser.parse_args()
    os.environ.pop("TEMPORAL_ADDRESS", None)
    result = asyncio.run(
        main(args.stream_seconds, [int(n) for n in args.steps.split(",") if n], args.trials)
    )
    report(result)
    sys.exit(0)
