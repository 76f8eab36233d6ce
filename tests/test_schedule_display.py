"""What `schedule describe` shows of buffered runs, a paused schedule and runs in progress.

The schedule's task queue has no worker, so its first run stays running (Temporal starts
run workflows by itself) and what is due meanwhile waits in the buffer: nothing here
depends on how fast a worker is.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from typing import Any

from temporalio.client import Client

from geppetto_temporal import schedules as sch
from tests.waiting import eventually
from tests.workers import GEPPETTO, REPO_ROOT, WorkerProcs

YEARLY = "0 0 1 1 *"


async def test_buffered_paused_and_running_runs_are_shown(
    client: Client, worker_procs: WorkerProcs
) -> None:
    name = f"display-{uuid.uuid4().hex[:8]}"
    target = f"display-session-{uuid.uuid4().hex[:8]}"
    created = await sch.create_schedule(
        client,
        name,
        prompt="hello",
        cron=YEARLY,
        session_id=target,
        overlap=sch.Overlap.BUFFER,
        task_queue=f"no-worker-{uuid.uuid4().hex[:8]}",
        paused=True,
    )
    try:
        # Paused: no next runs, although Temporal still computes the cron's times.
        assert created.paused and created.next_runs == []
        await sch.trigger(client, name)  # a trigger runs a paused schedule too
        running = await eventually(
            lambda: sch.describe_schedule(client, name, recent=5),
            lambda info: len(info.running) == 1 and len(info.recent_runs) == 1,
            what="the first run to start",
        )
        # A run that has not answered yet still names the schedule's fixed session.
        [run] = running.recent_runs
        assert (run.status, run.session_id) == ("running", target)
        await sch.trigger(client, name)
        buffered = await eventually(
            lambda: sch.describe_schedule(client, name, recent=5),
            lambda info: info.buffered == 1,
            what="the second run to wait in the buffer",
        )
        assert buffered.runs_started == 1 and buffered.next_runs == []
        shown = await asyncio.to_thread(
            subprocess.run,
            [*GEPPETTO, "schedule", "describe", name, "--recent", "0"],
            env=worker_procs.env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "1 started, 0 skipped (overlap), 1 buffered" in shown.stdout, shown.stdout
        assert "none while paused" in shown.stdout and "no runs yet" not in shown.stdout
        await sch.unpause(client, name)
        active = await sch.describe_schedule(client, name, recent=0)
        assert active.next_runs and all(t.year > 2000 for t in active.next_runs)
    finally:
        info: Any = await sch.describe_schedule(client, name, recent=0)
        await sch.delete(client, name)
        for workflow_id in info.running:
            await client.get_workflow_handle(workflow_id).terminate("test cleanup")
