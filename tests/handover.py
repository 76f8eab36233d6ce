"""SIGKILL of a worker process at a continue-as-new handover, shared by the suite and the soak bench.

Four points: during an inference's continue-as-new (its run has recorded the step that makes
the new run due), during the step right after it (the new run's first LLM step is running),
and the same two for a session (its history is past the continue-as-new suggestion; the new
run's first inference is running). A fresh worker process starts right after the kill, and
the trial checks the outcome: one final turn per prompt, no block lost or duplicated.
`tests/test_handover_crash.py` runs the inference points once each; `bench/handover_kills.py`
runs every point many times.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from geppetto_temporal import BlockKind, EngineBuilder, Session
from geppetto_temporal.turns import InferenceStatus, Turn
from tests.workers import (
    WorkerProcess,
    WorkerProcs,
    history_events,
    running_activity,
    unique_queue,
    wait_until,
    within,
)

INFERENCE_POINTS = ("inference-handover", "after-inference-handover")
SESSION_POINTS = ("session-handover", "after-session-handover")
#: Tool steps of the inference trials; two steps per run, so three handovers.
TOOL_STEPS = 5
STEPS_PER_RUN = 2
#: Prompts of the session trials (the session continues as new every few of them).
SESSION_PROMPTS = 6

#: Kill to the end of the trial (the default 10 s sticky-queue timeout is the usual cost).
RECOVERY_LIMIT = 120.0

LLM_STEP = "geppetto.llm_step"


def handover_script(steps: int = TOOL_STEPS) -> dict[str, Any]:
    """Prompts containing "count" call `slow_local_tool` `steps` times, then answer; others are echoed.

    The tool is a local activity taking 0.5 s: it runs inside the workflow task that ends a
    run with continue-as-new, so a kill right after the step's completion lands in that task.
    """
    return {
        "rules": [
            {
                "name": "answer",
                "when": {"last_user_contains": "count", "tool_result_count": steps},
                "reply": {"text": f"counted {steps}"},
            },
            {
                "name": "count",
                "when": {"last_user_contains": "count"},
                # Slow enough (0.4 s) that a running step is seen.
                "reply": {
                    "tool_calls": [{"name": "slow_local_tool", "arguments": {"seconds": 0.5}}],
                    "delay": 0.4,
                },
            },
            {"name": "echo", "reply": {"text": "echo {last_user}"}},
        ]
    }


def engine(base_url: str) -> EngineBuilder:
    # Short heartbeats: a dead worker's activity is retried elsewhere within seconds.
    return (
        EngineBuilder("openai:scripted")
        .base_url(base_url)
        .llm_activity(heartbeat_seconds=2)
        .tool_heartbeat(2)
        .max_iterations(TOOL_STEPS + 1)
        .steps_per_run(STEPS_PER_RUN)
    )


@dataclass
class Trial:
    """One kill: where it landed and how long the recovery took."""

    point: str
    session_id: str
    landed: str = ""
    recovery_seconds: float = 0.0
    turns: list[Turn] = field(default_factory=list)


def check_counting_turn(turn: Turn, steps: int = TOOL_STEPS) -> None:
    """A counting turn: the prompt, `steps` answered calls, the answer; nothing doubled."""
    kinds = [BlockKind.USER, *[BlockKind.TOOL_CALL, BlockKind.TOOL_USE] * steps, BlockKind.LLM_TEXT]
    assert [b.kind for b in turn.blocks[-len(kinds) :]] == kinds, [b.kind for b in turn.blocks]
    assert len({b.id for b in turn.blocks}) == len(turn.blocks)
    calls = [b.call_id for b in turn.blocks if b.kind == BlockKind.TOOL_CALL]
    assert [b.call_id for b in turn.blocks if b.kind == BlockKind.TOOL_USE] == calls
    assert turn.metadata.status == InferenceStatus.COMPLETED
    assert turn.last_text == f"counted {steps}"


async def _completed_steps(client: Client, workflow_id: str, run_id: str) -> int:
    events = await history_events(client.get_workflow_handle(workflow_id, run_id=run_id))
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    return sum(
        1
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and scheduled.get(e.activity_task_completed_event_attributes.scheduled_event_id) == LLM_STEP
    )


async def _kill_and_replace(
    worker: WorkerProcess,
    trial: Trial,
    workflow: WorkflowHandle[Any, Any],
    first_run: str | None,
    procs: WorkerProcs,
    queue: str,
) -> float:
    """SIGKILL the worker, note whether the new run had begun, start a fresh worker."""
    worker.kill()
    killed_at = time.monotonic()
    trial.landed = (
        "after the new run began"
        if (await workflow.describe()).run_id != first_run
        else "before the new run began"
    )
    procs.spawn(queue)
    return killed_at


async def crash_inference_handover(
    point: str, client: Client, procs: WorkerProcs, base_url: str
) -> Trial:
    """Kill the only worker at an inference's handover (or the step after); a new one finishes."""
    queue = unique_queue("handover")
    worker = await procs.start(queue)
    session = await Session.create(
        client, engine(base_url), session_id=f"handover-{uuid.uuid4().hex[:8]}", task_queue=queue
    )
    handle = await session.start_inference("count, please")
    workflow = handle.workflow_handle
    first_run = (await workflow.describe()).run_id
    assert first_run is not None
    trial = Trial(point, session.session_id)
    if point == "inference-handover":

        async def due() -> bool:
            # The tool is a local activity: it runs, and the run continues as new, in the
            # workflow task that follows this step's completion.
            return await _completed_steps(client, handle.inference_id, first_run) >= STEPS_PER_RUN

        await wait_until(due, 60, "the step that makes a new run due", procs.diagnostics)
    else:

        async def next_run_stepping() -> bool:
            if (await workflow.describe()).run_id == first_run:
                return False
            return await running_activity(workflow, LLM_STEP) is not None

        await wait_until(next_run_stepping, 60, "the new run's first step", procs.diagnostics)
    killed_at = await _kill_and_replace(worker, trial, workflow, first_run, procs, queue)
    turn = await within(handle.wait(), RECOVERY_LIMIT, f"{point} recovery", procs.diagnostics)
    trial.recovery_seconds = time.monotonic() - killed_at
    check_counting_turn(turn)
    trial.turns = await session.turns()
    assert [t.metadata.inference_id for t in trial.turns] == [handle.inference_id]
    return trial


async def crash_session_handover(
    point: str, client: Client, procs: WorkerProcs, base_url: str
) -> Trial:
    """Kill the only worker at a session's handover (or the prompt after); every prompt runs once.

    `client`'s server must suggest continue-as-new after a few dozen history events: the
    session continues as new once the first four prompts are done, and two more follow.
    """
    queue = unique_queue("session-handover")
    worker = await procs.start(queue)
    session = await Session.create(
        client,
        engine(base_url),
        session_id=f"session-handover-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )
    prompts = [f"count {i}" if i % 2 == 0 else f"say {i}" for i in range(SESSION_PROMPTS)]
    first, second = prompts[:4], prompts[4:]
    for i, prompt in enumerate(first):
        await session.submit_prompt(prompt, idempotency_key=f"k{i}")
    workflow = client.get_workflow_handle(session.session_id)
    first_run = (await workflow.describe()).run_id
    trial = Trial(point, session.session_id)
    if point == "session-handover":
        # The session continues as new in the workflow task that records its fourth turn.
        last = client.get_workflow_handle(f"{session.session_id}/inference/4")

        async def fourth_done() -> bool:
            try:
                return (await last.describe()).close_time is not None
            except Exception:
                return False

        await wait_until(fourth_done, 90, "the fourth inference's end", procs.diagnostics)
    else:

        async def next_run() -> bool:
            return (await workflow.describe()).run_id != first_run

        await wait_until(next_run, 90, "the session's new run", procs.diagnostics)
        for i, prompt in enumerate(second, start=len(first)):
            await session.submit_prompt(prompt, idempotency_key=f"k{i}")

        async def stepping() -> bool:
            inference = client.get_workflow_handle(f"{session.session_id}/inference/5")
            try:
                return await running_activity(inference, LLM_STEP) is not None
            except Exception:
                return False

        await wait_until(stepping, 90, "the new run's first step", procs.diagnostics)
    killed_at = await _kill_and_replace(worker, trial, workflow, first_run, procs, queue)
    if point == "session-handover":
        # Prompts arriving while the session has no worker, mid-handover.
        for i, prompt in enumerate(second, start=len(first)):
            await session.submit_prompt(prompt, idempotency_key=f"k{i}")

    async def all_answered() -> bool:
        try:
            status = await session.status()
        except Exception:
            return False
        return status.turn_count == len(prompts) and status.active_inference_id is None

    await wait_until(all_answered, RECOVERY_LIMIT, f"{point}: every prompt", procs.diagnostics)
    trial.recovery_seconds = time.monotonic() - killed_at
    trial.turns = await session.turns()
    assert [t.prompt for t in trial.turns] == prompts
    for turn in trial.turns:
        if "count" in turn.prompt:
            check_counting_turn(turn)
        else:
            assert turn.last_text == f"echo {turn.prompt}"
            assert turn.metadata.status == InferenceStatus.COMPLETED
    previous: list[Any] = []
    for turn in trial.turns:
        assert turn.blocks[: len(previous)] == previous
        previous = turn.blocks
    return trial
