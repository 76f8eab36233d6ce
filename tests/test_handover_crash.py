"""SIGKILL of the only worker during an inference's continue-as-new, and during the step after.

Real `geppetto worker` processes (tests/workers.py); a fresh one starts right after the kill.
The inference finishes with one final turn, every call answered once, nothing doubled
(tests/handover.py has the scenario; bench/handover_kills.py repeats it 20 times per point,
sessions' handovers included; tests/test_continue_as_new.py kills around a session's).
"""

from __future__ import annotations

import asyncio

from temporalio.client import Client

from geppetto_temporal.testing import ScriptedModelServer
from tests.handover import INFERENCE_POINTS, crash_inference_handover, handover_script
from tests.workers import WorkerProcs


async def test_sigkill_at_an_inference_handover_and_the_step_after(
    client: Client, model_server: ScriptedModelServer, worker_procs: WorkerProcs
) -> None:
    base_url = model_server.add_script(handover_script())
    async with asyncio.TaskGroup() as group:
        trials = [
            group.create_task(crash_inference_handover(point, client, worker_procs, base_url))
            for point in INFERENCE_POINTS
        ]
    for trial in trials:
        result = trial.result()
        print(
            f"{result.point}: killed {result.landed}; recovered in {result.recovery_seconds:.1f}s"
        )
        assert len(result.turns) == 1
