"""Two `geppetto worker` processes on one task queue share the work; sessions are not pinned.

Real worker subprocesses (tests/workers.py), the tests' dev server and the scripted model.
Which process ran what is read from Temporal itself: every ActivityTaskStarted and
WorkflowTaskCompleted event carries the worker's identity, `<pid>@<host>` by default.

Observed: an inference's activities all run on the worker that runs its workflow (the SDK's
eager activity dispatch), so the load is shared per workflow, not per activity. After a kill,
the sessions the dead worker ran last wait ~10 s for their sticky task queue to time out;
the others are served at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

from temporalio.client import Client

from geppetto_temporal import BlockKind, EngineBuilder, ExecutionHandle, Session
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import InferenceStatus, Turn
from tests.workers import (
    WorkerProcess,
    WorkerProcs,
    activity_starts,
    unique_queue,
    within,
    workflow_task_identities,
)

SESSIONS = 10

#: Step 1 calls two tools, step 2 streams the answer: three activities per inference (the
#: `calculate` example tool is a local activity).
SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "calls",
            "when": {"last_role": "user"},
            "reply": {
                "text": "Working on it.",
                "tool_calls": [
                    {"name": "slow_tool", "arguments": {"seconds": 0.2}},
                    {"name": "calculate", "arguments": {"expression": "6 * 7"}},
                ],
                "delay": 0.1,
            },
        },
        {
            "name": "answer",
            "when": {"last_role": "tool"},
            "reply": {
                "text": "Done for {last_user}: {tool_results}",
                "chunk_size": 8,
                "chunk_delay": 0.02,
            },
        },
    ]
}


def expected_answer(prompt: str) -> str:
    slept = json.dumps({"slept": 0.2})
    math = json.dumps({"expression": "6 * 7", "result": 42})
    return f"Done for {prompt}: {slept}; {math}"


def owner(identity: str, workers: list[WorkerProcess]) -> WorkerProcess:
    owners = [w for w in workers if w.owns(identity)]
    assert len(owners) == 1, f"{identity!r} is none of the pids {[w.pid for w in workers]}"
    return owners[0]


async def who_ran(handle: ExecutionHandle, workers: list[WorkerProcess]) -> Counter[int]:
    """Pid -> number of activities (LLM steps and tool calls) of this inference it ran."""
    return Counter(
        owner(identity, workers).pid
        for _, identity, _ in await activity_starts(handle.workflow_handle)
    )


def check_turn(turn: Turn, prompt: str) -> None:
    assert turn.metadata.status == InferenceStatus.COMPLETED
    assert turn.last_text == expected_answer(prompt)
    assert [b.kind for b in turn.blocks_since_last_user()] == [
        BlockKind.LLM_TEXT,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_USE,
        BlockKind.TOOL_USE,
        BlockKind.LLM_TEXT,
    ]


async def test_two_workers_share_sessions_and_either_can_take_over(
    client: Client, model_server: ScriptedModelServer, worker_procs: WorkerProcs
) -> None:
    queue = unique_queue("scale-out")
    workers = list(await asyncio.gather(worker_procs.start(queue), worker_procs.start(queue)))
    base_url = model_server.add_script(SCRIPT)
    engine = EngineBuilder("openai:scripted").base_url(base_url).llm_activity(heartbeat_seconds=2)
    engine = engine.tool_heartbeat(2)
    sessions = list(
        await asyncio.gather(
            *(Session.create(client, engine, task_queue=queue) for _ in range(SESSIONS))
        )
    )

    # Round 1: every session's inference at once, on two workers.
    started = time.monotonic()
    handles = list(
        await asyncio.gather(*(s.start_inference(f"job {i}") for i, s in enumerate(sessions)))
    )
    turns = await within(
        asyncio.gather(*(h.wait() for h in handles)), 60, "round 1", worker_procs.diagnostics
    )
    round_1 = time.monotonic() - started
    for i, turn in enumerate(turns):
        check_turn(turn, f"job {i}")
    per_inference = [await who_ran(h, workers) for h in handles]
    # Two LLM steps and the sleep tool; `calculate` is a local activity (a marker, run
    # by whichever worker ran that workflow task), so it has no activity events.
    assert all(sum(c.values()) == 3 for c in per_inference), per_inference
    total = sum(per_inference, Counter[int]())
    assert set(total) == {w.pid for w in workers}, f"one worker did all the work: {total}"
    mixed = sum(1 for c in per_inference if len(c) == 2)
    session_tasks: Counter[int] = Counter()
    for session in sessions:
        for identity in await workflow_task_identities(session.workflow_handle):
            session_tasks[owner(identity, workers).pid] += 1
    print(
        f"round 1: {SESSIONS} inferences in {round_1:.1f}s; activities per pid {dict(total)}; "
        f"{mixed} inferences used both workers; session workflow tasks per pid "
        f"{dict(session_tasks)}"
    )

    # Kill a worker that ran some sessions' prompt 1 (all its LLM steps and tools); the
    # sessions whose workflow it ran last are cached there, and Temporal routes their next
    # task to it first. Then prompt every session again.
    first_solo = next((c for c in per_inference if len(c) == 1), None)
    assert first_solo is not None, per_inference
    [doomed_pid] = first_solo
    doomed = next(w for w in workers if w.pid == doomed_pid)
    survivor = next(w for w in workers if w is not doomed)
    ran_on_doomed = [
        s for s, c in zip(sessions, per_inference, strict=True) if set(c) == {doomed.pid}
    ]
    pinned = [
        s for s in sessions if doomed.owns((await workflow_task_identities(s.workflow_handle))[-1])
    ]
    doomed.kill()
    killed_at = time.monotonic()

    done_at: dict[int, float] = {}

    async def prompt_again(i: int, session: Session) -> tuple[ExecutionHandle, Turn]:
        handle = await session.start_inference(f"again {i}")
        turn = await handle.wait()
        done_at[i] = time.monotonic() - killed_at
        return handle, turn

    results = await within(
        asyncio.gather(*(prompt_again(i, s) for i, s in enumerate(sessions))),
        60,
        "round 2",
        worker_procs.diagnostics,
    )
    handles_2 = [handle for handle, _ in results]
    turns_2 = [turn for _, turn in results]
    round_2 = time.monotonic() - killed_at
    for i, (session, turn) in enumerate(zip(sessions, turns_2, strict=True)):
        check_turn(turn, f"again {i}")
        assert [t.prompt for t in await session.turns()] == [f"job {i}", f"again {i}"]
    for handle in handles_2:
        starts = await activity_starts(handle.workflow_handle)
        assert len(starts) == 3 and all(survivor.owns(ident) for _, ident, _ in starts), starts
        for identity in await workflow_task_identities(handle.workflow_handle):
            assert survivor.owns(identity), identity
    for session in sessions:
        assert survivor.owns((await workflow_task_identities(session.workflow_handle))[-1])
    slowest_pinned = max((done_at[sessions.index(s)] for s in pinned), default=0.0)
    others = [done_at[i] for i, s in enumerate(sessions) if s not in pinned]
    print(
        f"round 2 after killing pid {doomed.pid}: {SESSIONS} inferences done {round_2:.1f}s "
        f"after the kill; the {len(pinned)} sessions last run on the killed worker took up to "
        f"{slowest_pinned:.1f}s, the others up to {max(others, default=0):.1f}s; "
        f"{len(ran_on_doomed)} sessions had run prompt 1 there"
    )
