"""A worker process killed with SIGKILL is replaced and the inference completes exactly once.

Everything is real: `geppetto worker` subprocesses (tests/workers.py) on a task queue of their
own, the tests' Temporal dev server, the scripted model over HTTP. Each case kills the worker at
one point of an inference (mid-stream, mid-tool, between two LLM steps), starts a fresh worker
process right away, and checks that the inference ends with one final turn, no duplicated
blocks, that the model saw the retried step, and that the session takes the next prompt.

All cases run `TRIALS` independent trials each, all at once (own session, own task queue, own
workers): a crash costs 13-21 s of wall time, so running them one after the other would take
minutes.

Why a crash costs that much, although the dead worker's activity is retried on the new worker
after its heartbeat timeout (2 s here) plus the retry backoff (1 s):

* the next workflow task of the inference (and of its session) goes to the dead worker's
  *sticky* task queue and moves to the shared queue only after the worker's
  `sticky_queue_schedule_to_start_timeout` (10 s, the SDK default `create_worker` keeps); a
  workflow task the dead worker had already started waits for its 10 s task timeout instead.
  Until then the inference makes no progress and subscribers see no events;
* the LLM step reads the conversation before its prompt with a query to the session, and
  (on a worker's first call) imports the provider SDK, before it starts heartbeating. While
  the session is stuck on the dead worker's sticky queue that query outlives the 2 s
  heartbeat timeout, so retries are burned (the step usually wins on attempt 4 of 5), and an
  attempt that timed out on the server may still call the model once the query returns. So
  the tests count model calls "at least", and print them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import Client

from geppetto_temporal import BlockKind, EngineBuilder, ExecutionHandle, Session
from geppetto_temporal.contract import inference_workflow_id
from geppetto_temporal.events import (
    Event,
    FinalEvent,
    InferenceFinishedEvent,
    PartialEvent,
    StartEvent,
    ToolCallExecuteEvent,
    ToolCallExecutionResultEvent,
)
from geppetto_temporal.testing import RecordedRequest, ScriptedModelServer
from geppetto_temporal.turns import BlockMetaKey, InferenceStatus, PayloadKey, Turn
from tests.workers import (
    WorkerProcess,
    WorkerProcs,
    activity_starts,
    running_activity,
    unique_queue,
    wait_until,
    within,
    workflow_task_timeouts,
)

#: Independent trials of each crash case (all cases' trials run concurrently).
TRIALS = 2
#: Heartbeat timeout of the LLM and tool activities: how soon a dead worker is noticed.
HEARTBEAT_SECONDS = 2
#: Most a recovery may take, kill to final turn. Observed: 13-21 s (see the module docstring).
RECOVERY_BUDGET = 45.0

LLM_STEP = "geppetto.llm_step"
TOOL_CALL = "geppetto.tool_call"

ECHO_RULE: dict[str, Any] = {"name": "echo", "reply": {"text": "You said: {last_user}"}}
#: The first prompt of every session, answered by the echo rule before the crash.
WARM_UP = "hello"

#: ~2.5 s of streaming (60 chunks, 40 ms apart), long enough to be killed in the middle.
STORY = "The keeper counted the waves. " + " ".join(f"wave-{i}" for i in range(50)) + " The end."
STORY_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "story",
            "when": {"last_user_contains": "story"},
            "reply": {"text": STORY, "chunk_size": 6, "chunk_delay": 0.04},
        },
        ECHO_RULE,
    ]
}


def tool_script(seconds: float, *, first_answer_delay: float | None = None) -> dict[str, Any]:
    """Step 1 calls `slow_tool(seconds)`; step 2 answers with the tool result.

    With `first_answer_delay`, the model holds its first step-2 answer back that long (a
    retry is answered at once).
    """
    faults = [{"delay": first_answer_delay}] if first_answer_delay is not None else []
    return {
        "rules": [
            {
                "name": "calls",
                "when": {"last_role": "user", "last_user_contains": "tool"},
                "reply": {
                    "text": "Let me wait.",
                    "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": seconds}}],
                },
            },
            {
                "name": "answer",
                "when": {"last_role": "tool"},
                "reply": {"text": "Waited: {tool_results}"},
                "faults": faults,
            },
            ECHO_RULE,
        ]
    }


def engine(base_url: str) -> EngineBuilder:
    """Short heartbeats, so a dead worker's activity is retried elsewhere within seconds."""
    return (
        EngineBuilder("openai:scripted")
        .base_url(base_url)
        .llm_activity(heartbeat_seconds=HEARTBEAT_SECONDS)
        .tool_heartbeat(HEARTBEAT_SECONDS)
    )


# ---- observing an inference from outside -------------------------------------------------------


def last_user(request: RecordedRequest) -> str:
    users = [m for m in request.body["messages"] if m["role"] == "user"]
    return str(users[-1]["content"]) if users else ""


def by_rule(requests: list[RecordedRequest], rule: str) -> list[RecordedRequest]:
    return [r for r in requests if r.rule == rule]


def tool_messages(request: RecordedRequest) -> list[str]:
    return [str(m["content"]) for m in request.body["messages"] if m["role"] == "tool"]


async def collect_events(handle: ExecutionHandle) -> list[Event]:
    return [event async for event in handle.events()]


@dataclass
class Crash:
    """One trial: the session, the two worker processes and what happened."""

    case: str
    session: Session
    handle: ExecutionHandle
    server: ScriptedModelServer
    base_url: str
    killed: WorkerProcess
    replacement: WorkerProcess
    recovery_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def server_requests(self) -> list[RecordedRequest]:
        return self.server.requests(self.base_url)

    def diag(self) -> str:
        return f"{self.case} session {self.session.session_id}; notes {self.notes}"


Trigger = Callable[[ExecutionHandle, str, WorkerProcess, ScriptedModelServer], Awaitable[str]]


async def mid_stream(
    handle: ExecutionHandle, base_url: str, worker: WorkerProcess, server: ScriptedModelServer
) -> str:
    """Wait until the model has streamed a few chunks of the story to the worker (~0.3 s)."""

    def streaming() -> bool:
        requests = by_rule(server.requests(base_url), "story")
        return (
            bool(requests)
            and requests[0].outcome == "pending"
            and len(requests[0].chunk_times) >= 8
        )

    await wait_until(streaming, 30, "the story to stream", worker.output)
    return f"killed after {len(by_rule(server.requests(base_url), 'story')[0].chunk_times)} chunks"


async def mid_tool(
    handle: ExecutionHandle, base_url: str, worker: WorkerProcess, server: ScriptedModelServer
) -> str:
    """Wait until slow_tool runs on the worker (the server shows the activity as started)."""
    pending = await wait_until(
        lambda: running_activity(handle.workflow_handle, TOOL_CALL),
        30,
        "slow_tool to start",
        worker.output,
    )
    assert worker.owns(pending.last_worker_identity), pending
    await asyncio.sleep(0.3)  # well inside the tool's 2 s
    return "killed 0.3 s into slow_tool"


async def between_steps(
    handle: ExecutionHandle, base_url: str, worker: WorkerProcess, server: ScriptedModelServer
) -> str:
    """Kill as soon as the tool's result is in history, before the second LLM step answers.

    Depending on a few milliseconds, the kill lands while the worker runs the workflow task
    that records the tool result and schedules step 2 (it then times out), just before step 2
    reaches the model, or while the model holds its first step-2 answer back (3 s); in every
    case the dead worker has produced no step-2 output.
    """

    async def tool_done() -> bool:
        starts = await activity_starts(handle.workflow_handle)
        return any(kind == TOOL_CALL for kind, _, _ in starts)

    await wait_until(tool_done, 30, "the tool result", worker.output)
    answers = by_rule(server.requests(base_url), "answer")
    return f"step 2 requests in flight at kill: {len(answers)}"


CASES: dict[str, tuple[dict[str, Any], str, Trigger]] = {
    "mid-stream": (STORY_SCRIPT, "tell me a story", mid_stream),
    "mid-tool": (tool_script(2.0), "use the tool please", mid_tool),
    "between-steps": (
        tool_script(0.3, first_answer_delay=3.0),
        "use the tool please",
        between_steps,
    ),
}


async def crash_and_recover(
    case: str, client: Client, server: ScriptedModelServer, procs: WorkerProcs
) -> Crash:
    script, prompt, trigger = CASES[case]
    queue = unique_queue(f"crash-{case}")
    worker_a = await procs.start(queue)
    base_url = server.add_script(script)
    session = await Session.create(client, engine(base_url), task_queue=queue)
    # A warm-up turn first: from the second prompt on, an LLM step reads the conversation
    # before its prompt from the session, which a crash must not break either.
    warm_up = await (await session.start_inference(WARM_UP)).wait()
    assert warm_up.last_text == f"You said: {WARM_UP}"
    handle = await session.start_inference(prompt)
    # A subscriber that watches through the crash: its queries go unanswered while no worker
    # holds the inference, and it must wait that out, not fail.
    watcher = asyncio.create_task(collect_events(handle))
    note = await trigger(handle, base_url, worker_a, server)
    worker_a.kill()
    killed_at = time.monotonic()
    worker_b = await procs.start(queue)
    assert worker_b.ready_at is not None  # `start` waited for it
    crash = Crash(case, session, handle, server, base_url, worker_a, worker_b, notes=[note])
    crash.notes.append(f"replacement ready {worker_b.ready_at - killed_at:.1f}s after the kill")
    turn: Turn = await within(
        handle.wait(), RECOVERY_BUDGET, f"{case}: the inference to finish", procs.diagnostics
    )
    crash.recovery_seconds = time.monotonic() - killed_at
    for name, wf in (("inference", handle.workflow_handle), ("session", session.workflow_handle)):
        timeouts = await workflow_task_timeouts(wf)
        crash.notes.append(f"{name} workflow task timeouts: {', '.join(timeouts) or 'none'}")
    await check_one_final_turn(crash, prompt, turn)
    events = await within(collect_events(handle), 30, "the event stream", procs.diagnostics)
    watched = await within(watcher, 30, "the watcher's stream", procs.diagnostics)
    durable = [(e.meta.seq, e.type) for e in watched if not e.meta.live]
    assert durable == [(e.meta.seq, e.type) for e in events if not e.meta.live]
    await CHECKS[case](crash, turn, events)
    await check_next_prompt(crash, prompt)
    return crash


# ---- what every case must satisfy --------------------------------------------------------------


async def check_one_final_turn(crash: Crash, prompt: str, turn: Turn) -> None:
    assert turn.metadata.status == InferenceStatus.COMPLETED, crash.diag()
    assert turn.metadata.inference_id == crash.handle.inference_id
    turns = await crash.session.turns()
    assert len(turns) == 2, [t.metadata for t in turns]  # the warm-up's and this prompt's
    assert [b.id for b in turns[1].blocks] == [b.id for b in turn.blocks]
    transcript = await crash.session.transcript()
    users = [b.text for b in transcript.blocks if b.kind == BlockKind.USER]
    assert users == [WARM_UP, prompt]
    assert len({b.id for b in transcript.blocks}) == len(transcript.blocks)  # no block twice
    # Every activity ran on one of the two worker processes; the last ones on the new one.
    starts = await activity_starts(crash.handle.workflow_handle)
    for _, identity, _ in starts:
        assert crash.killed.owns(identity) or crash.replacement.owns(identity), starts
    assert crash.replacement.owns(starts[-1][1]), starts
    # No other inference was started: no prompt ran twice.
    assert not await ExecutionHandle(
        crash.session.client, inference_workflow_id(crash.session.session_id, 3)
    ).exists()


async def check_next_prompt(crash: Crash, prompt: str) -> None:
    nxt = await within(
        (await crash.session.start_inference("next please")).wait(), 30, "the next prompt"
    )
    assert nxt.last_text == "You said: next please"
    turns = await crash.session.turns()
    assert [t.metadata.status for t in turns] == [InferenceStatus.COMPLETED] * 3
    assert [t.prompt for t in turns] == [WARM_UP, prompt, "next please"]


def single_finish(events: list[Event]) -> None:
    finished = [e for e in events if isinstance(e, InferenceFinishedEvent)]
    assert len(finished) == 1 and finished[0].status == InferenceStatus.COMPLETED, finished
    assert events[-1] is finished[0]


def start_attempts(events: list[Event]) -> list[int]:
    """The attempt of each `start` event, in stream order (an LLM step's events carry one)."""
    attempts: list[int] = []
    for e in events:
        if isinstance(e, StartEvent):
            assert e.meta.attempt is not None, e
            attempts.append(e.meta.attempt)
    return attempts


async def check_mid_stream(crash: Crash, turn: Turn, events: list[Event]) -> None:
    assert turn.last_text == STORY
    [answer] = turn.blocks_since_last_user()
    assert answer.kind == BlockKind.LLM_TEXT
    starts = await activity_starts(crash.handle.workflow_handle)
    [(kind, _, attempt)] = starts
    assert kind == LLM_STEP and attempt >= 2
    assert answer.metadata[BlockMetaKey.ATTEMPT] == attempt  # the retry's text, alone
    # The model saw the cut request, then the same request again, which completed. (Attempts
    # that timed out on the server may still reach the model: see `model_calls`.)
    requests = by_rule(crash.server_requests(), "story")
    first = requests[0]
    assert first.outcome == "client_disconnected", first.outcome
    assert 8 <= len(first.chunk_times) < len(STORY) // 6
    assert "completed" in [r.outcome for r in requests[1:]], [r.outcome for r in requests]
    for request in requests[1:]:
        assert request.body["messages"] == first.body["messages"]
    crash.notes.append(f"LLM step won on attempt {attempt}; {model_calls(requests)}")
    # The stream keeps the dead attempt's deltas, then a `start` of the winning attempt for the
    # same message; its deltas alone are the answer.
    single_finish(events)
    step_starts = start_attempts(events)
    assert attempt in step_starts and step_starts == sorted(step_starts), step_starts
    if 1 not in step_starts:  # the dead worker had not flushed its first events yet
        crash.notes.append("no event of attempt 1 reached the stream")
    partials = [e for e in events if isinstance(e, PartialEvent)]
    assert "".join(e.delta for e in partials if e.meta.attempt == attempt) == STORY
    assert [e.text for e in events if isinstance(e, FinalEvent)] == [STORY]
    winner_start = next(
        i for i, e in enumerate(events) if isinstance(e, StartEvent) and e.meta.attempt == attempt
    )
    late = [e for e in events[winner_start:] if e.meta.attempt not in (None, attempt)]
    if late:
        crash.notes.append(f"{len(late)} events of a timed-out attempt after the winner's start")
    else:
        assert partials[-1].completion == STORY  # what a subscriber rebuilds
    naive = "".join(e.delta for e in partials)
    crash.notes.append(f"naive delta concatenation is {len(naive) - len(STORY)} chars too long")


def model_calls(requests: list[RecordedRequest]) -> str:
    return f"model calls: {', '.join(r.outcome for r in requests)}"


async def check_tool_turn(crash: Crash, turn: Turn, seconds: float) -> list[RecordedRequest]:
    own = turn.blocks_since_last_user()
    kinds = [b.kind for b in own]
    assert kinds == [
        BlockKind.LLM_TEXT,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_USE,
        BlockKind.LLM_TEXT,
    ], kinds
    result = {"slept": seconds}
    assert own[2].payload[PayloadKey.RESULT] == result
    assert turn.last_text == f"Waited: {json.dumps(result)}"
    requests = crash.server_requests()
    # Step 1 was recorded before the crash: the model is never asked it again.
    assert len(by_rule(requests, "calls")) == 1
    answers = by_rule(requests, "answer")
    assert "completed" in [a.outcome for a in answers], model_calls(answers)
    for answer in answers:
        assert tool_messages(answer) == [json.dumps(result)]
    return answers


async def check_mid_tool(crash: Crash, turn: Turn, events: list[Event]) -> None:
    answers = await check_tool_turn(crash, turn, 2.0)
    starts = await activity_starts(crash.handle.workflow_handle)
    assert [(kind, attempt) for kind, _, attempt in starts[:2]] == [
        (LLM_STEP, 1),
        (TOOL_CALL, 2),  # the tool ran again on the new worker
    ], starts
    assert [kind for kind, _, _ in starts] == [LLM_STEP, TOOL_CALL, LLM_STEP], starts
    crash.notes.append(f"step 2 won on attempt {starts[2][2]}; {model_calls(answers)}")
    assert crash.killed.owns(starts[0][1])
    assert crash.replacement.owns(starts[1][1]) and crash.replacement.owns(starts[2][1])
    single_finish(events)
    assert len([e for e in events if isinstance(e, ToolCallExecuteEvent)]) == 1
    results = [e for e in events if isinstance(e, ToolCallExecutionResultEvent)]
    assert len(results) == 1 and not results[0].is_error


async def check_between_steps(crash: Crash, turn: Turn, events: list[Event]) -> None:
    answers = await check_tool_turn(crash, turn, 0.3)
    starts = await activity_starts(crash.handle.workflow_handle)
    assert [kind for kind, _, _ in starts] == [LLM_STEP, TOOL_CALL, LLM_STEP], starts
    # The tool finished before the crash and is not run again.
    assert starts[1][2] == 1 and crash.killed.owns(starts[1][1]), starts
    assert crash.replacement.owns(starts[2][1]), starts
    crash.notes.append(f"step 2 won on attempt {starts[2][2]}; {model_calls(answers)}")
    single_finish(events)
    assert len([e for e in events if isinstance(e, ToolCallExecutionResultEvent)]) == 1


CHECKS: dict[str, Callable[[Crash, Turn, list[Event]], Awaitable[None]]] = {
    "mid-stream": check_mid_stream,
    "mid-tool": check_mid_tool,
    "between-steps": check_between_steps,
}


# ---- the tests -----------------------------------------------------------------------------------


async def test_sigkill_then_a_new_worker_gives_one_final_turn(
    client: Client, model_server: ScriptedModelServer, worker_procs: WorkerProcs
) -> None:
    # Every case's trials at once: a recovery is mostly waiting on Temporal's timeouts.
    async with asyncio.TaskGroup() as group:
        trials = [
            group.create_task(crash_and_recover(case, client, model_server, worker_procs))
            for case in CASES
            for _ in range(TRIALS)
        ]
    for trial in trials:
        crash = trial.result()
        print(f"{crash.case}: recovered in {crash.recovery_seconds:.1f}s; {'; '.join(crash.notes)}")


QUEUE_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "answer",
            "reply": {
                "text": "Answer to {last_user}: " + " ".join(f"w{i}" for i in range(20)),
                "chunk_size": 6,
                "chunk_delay": 0.04,
            },
        }
    ]
}


async def test_accepted_prompts_run_exactly_once_in_order_across_a_crash(
    client: Client, model_server: ScriptedModelServer, worker_procs: WorkerProcs
) -> None:
    queue = unique_queue("crash-queue")
    worker_a = await worker_procs.start(queue)
    base_url = model_server.add_script(QUEUE_SCRIPT)
    session = await Session.create(client, engine(base_url), task_queue=queue)
    prompts = ["q0", "q1", "q2", "q3", "q4"]
    await (await session.start_inference("q0")).wait()  # q1 has a conversation before it
    # q1 starts at once and q2 queues behind it while the first worker is alive...
    await session.submit_prompt("q1", idempotency_key="k1")
    await session.submit_prompt("q2", idempotency_key="k2")

    def q1_streaming() -> bool:
        return any(
            last_user(r) == "q1" and r.outcome == "pending" and len(r.chunk_times) >= 3
            for r in model_server.requests(base_url)
        )

    await wait_until(q1_streaming, 30, "q1 to stream", worker_procs.diagnostics)
    worker_a.kill()
    killed_at = time.monotonic()
    # ...q3 and q4 arrive while no worker runs, and retries of q2 and q3 (same keys) too.
    await session.submit_prompt("q3", idempotency_key="k3")
    await session.submit_prompt("q2", idempotency_key="k2")
    await session.submit_prompt("q3", idempotency_key="k3")
    await session.submit_prompt("q4", idempotency_key="k4")
    await worker_procs.start(queue)

    last = ExecutionHandle(client, inference_workflow_id(session.session_id, len(prompts)))
    await wait_until(
        last.exists, RECOVERY_BUDGET, "the last prompt to start", worker_procs.diagnostics
    )
    await within(last.wait(), 30, "the last prompt to finish", worker_procs.diagnostics)
    print(f"queued prompts: all done {time.monotonic() - killed_at:.1f}s after the kill")

    turns = await session.turns()
    assert [t.prompt for t in turns] == prompts
    assert [t.metadata.status for t in turns] == [InferenceStatus.COMPLETED] * len(prompts)
    assert [t.metadata.inference_id for t in turns] == [
        inference_workflow_id(session.session_id, n) for n in range(1, len(prompts) + 1)
    ]
    for prompt, t in zip(prompts, turns, strict=True):
        assert t.last_text.startswith(f"Answer to {prompt}: ")
    transcript = await session.transcript()
    kinds = [b.kind for b in transcript.blocks]
    assert kinds == [BlockKind.USER, BlockKind.LLM_TEXT] * len(prompts)
    assert [b.text for b in transcript.blocks if b.kind == BlockKind.USER] == prompts
    status = await session.status()
    assert (status.active_inference_id, status.queued_prompts, status.turn_count) == (
        None,
        0,
        len(prompts),
    )
    assert not await ExecutionHandle(
        client, inference_workflow_id(session.session_id, len(prompts) + 1)
    ).exists()
    # The model was asked q1 again after the crash, and the prompts in order. (A prompt may be
    # sent more than once by an attempt that timed out: see the module docstring.)
    asked = [(last_user(r), r.outcome) for r in model_server.requests(base_url)]
    q1 = [outcome for prompt, outcome in asked if prompt == "q1"]
    assert len(q1) >= 2 and q1[0] == "client_disconnected" and "completed" in q1, asked
    assert list(dict.fromkeys(prompt for prompt, _ in asked)) == prompts, asked
    for prompt in prompts:
        assert "completed" in [outcome for p, outcome in asked if p == prompt], asked
    print(f"queued prompts: model calls {Counter(prompt for prompt, _ in asked)}; q1: {q1}")
