"""The option not taken: streamed text carried in an activity's heartbeat details.

An activity heartbeats every 20 ms with the text streamed so far (its length and
the time it was set); a reader polls `describe()` (a read: no history) every 50 ms
and records when each new length becomes visible. Heartbeats write no history, so
the cost is nil, but the SDK throttles heartbeats (at most one per
`max_heartbeat_throttle_interval`, geppetto's workers 1 s; by default 80 % of the
heartbeat timeout), which sets the latency floor. Prints a table and one JSON line.

    .venv/bin/python bench/heartbeat_details.py [--seconds 10]
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

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from geppetto_temporal import connect
from geppetto_temporal.devserver import EmbeddedServer

TASK_QUEUE = "geppetto-bench-heartbeat"
#: When each delta was produced (worker and reader share this process).
PRODUCED: list[float] = []


@activity.defn
async def stream_in_heartbeats(seconds: float) -> int:
    text = 0
    end = time.time() + seconds
    while time.time() < end:
        text += 5  # a 5-character delta every 20 ms, as a fast model streams
        PRODUCED.append(time.time())
        activity.heartbeat({"length": text, "at": time.time()})
        await asyncio.sleep(0.02)
    return text


@workflow.defn
class HeartbeatStream:
    @workflow.run
    async def run(self, seconds: float) -> int:
        result: int = await workflow.execute_activity(
            stream_in_heartbeats,
            seconds,
            start_to_close_timeout=timedelta(seconds=seconds + 60),
            heartbeat_timeout=timedelta(seconds=5),
        )
        return result


async def read(client: Client, workflow_id: str, done: asyncio.Event) -> list[float]:
    """Per delta, the latency (ms) from its production to a describe() showing it."""
    handle = client.get_workflow_handle(workflow_id)
    seen, latencies = 0, []
    while not done.is_set():
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            if pending.heartbeat_details.payloads:
                [detail] = await client.data_converter.decode(pending.heartbeat_details.payloads)
                if detail["length"] > seen:
                    now = time.time()
                    latencies += [
                        (now - t) * 1000 for t in PRODUCED[seen // 5 : detail["length"] // 5]
                    ]
                    seen = detail["length"]
        await asyncio.sleep(0.05)
    return latencies


async def main(seconds: float) -> dict[str, Any]:
    async with EmbeddedServer(Path(tempfile.mkdtemp(prefix="geppetto-bench-hb-"))) as server:
        client = await connect(server.address, from_env=False)
        async with Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=[HeartbeatStream],
            activities=[stream_in_heartbeats],
            workflow_runner=UnsandboxedWorkflowRunner(),
            max_heartbeat_throttle_interval=timedelta(seconds=1),
            default_heartbeat_throttle_interval=timedelta(seconds=1),
        ):
            workflow_id = f"hb-{uuid.uuid4().hex[:8]}"
            handle = await client.start_workflow(
                HeartbeatStream.run, seconds, id=workflow_id, task_queue=TASK_QUEUE
            )
            done = asyncio.Event()
            reader = asyncio.create_task(read(client, workflow_id, done))
            await handle.result()
            done.set()
            latencies = await reader
            events = len((await handle.fetch_history()).events)
    ordered = sorted(latencies)
    return {
        "seconds": seconds,
        "deltas_seen": len(latencies),
        "latency_ms": {
            "p50": statistics.median(latencies),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        },
        "history_events": events,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    os.environ.pop("TEMPORAL_ADDRESS", None)
    r = asyncio.run(main(args.seconds))
    print(
        f"heartbeat details: {r['deltas_seen']} deltas seen by describe(), "
        f"latency p50 {r['latency_ms']['p50']:.0f} ms p95 {r['latency_ms']['p95']:.0f} ms, "
        f"{r['history_events']} history events"
    )
    print(json.dumps(r, sort_keys=True))
    sys.exit(0)
