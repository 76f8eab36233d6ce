"""Sessions continue as new between inferences and lose nothing: turns, queue, streams, handles."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from geppetto_temporal import (
    EngineBuilder,
    InferenceCancelled,
    InferenceStatus,
    Session,
    SessionBusyError,
    connect,
    create_worker,
)
from geppetto_temporal.contract import SessionInput
from geppetto_temporal.events import FinalEvent
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.tools.examples import calculate
from tests.conftest import scripted_endpoints, scripted_endpoints_env
from tests.servers import dev_server
from tests.workers import WorkerProcs, unique_queue, wait_until

TASK_QUEUE = "geppetto-can-tests"
#: Temporal suggests continue-as-new after this many history events (default 4,096).
SUGGEST_AFTER_EVENTS = 40


@pytest.fixture(scope="module")
async def can_client(api_key_env: str, model_server: ScriptedModelServer) -> AsyncIterator[Client]:
    """A dev server that suggests continue-as-new after a few dozen events, and a worker on it."""
    dynamic = {"limit.historyCount.suggestContinueAsNew": SUGGEST_AFTER_EVENTS}
    async with dev_server(dynamic=dynamic) as env:
        client = await connect(env.client.service_client.config.target_host, from_env=False)
        async with create_worker(
            client,
            task_queue=TASK_QUEUE,
            tools=[calculate],
            endpoints=scripted_endpoints(model_server.url),
        ):
            yield client


async def runs_of(client: Client, workflow_id: str) -> int:
    return len([w async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")])


SCRIPT = {
    "rules": [
        {
            "name": "math",
            "when": {"last_role": "user", "last_user_contains": "add"},
            "reply": {"tool_calls": [{"name": "calculate", "arguments": {"expression": "40 + 2"}}]},
        },
        {
            "name": "after-math",
            "when": {"last_role": "tool"},
            "reply": {"text": "sum {tool_result_0}"},
        },
        # Slow enough that a second prompt certainly finds the session busy (it is cancelled).
        {
            "name": "slow",
            "when": {"last_user_contains": "slow"},
            "reply": {"text": "late", "delay": 60},
        },
        {"name": "echo", "reply": {"text": "echo {last_user}", "chunk_size": 3}},
    ]
}


async def test_session_survives_many_continue_as_new(
    can_client: Client, model_server: ScriptedModelServer
) -> None:
    base_url = model_server.add_script(SCRIPT)
    session = await Session.create(
        can_client,
        EngineBuilder("openai:scripted").base_url(base_url),
        session_id=f"can-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
    )
    handles = []
    for i in range(6):
        prompt = f"add please {i}" if i % 2 else f"prompt {i}"
        handle = await session.start_inference(prompt)
        handles.append(handle)
        await handle.wait()
    # Queued prompts submitted in a burst run in order, across run boundaries.
    for i in range(6, 10):
        await session.submit_prompt(f"queued {i}", idempotency_key=f"q{i}")
    for _ in range(300):
        status = await session.status()
        if (
            status.turn_count == 10
            and status.active_inference_id is None
            and not status.queued_prompts
        ):
            break
        await asyncio.sleep(0.05)
    assert await runs_of(can_client, session.session_id) >= 3, "expected several continue-as-new"

    turns = await session.turns()
    assert [t.prompt for t in turns] == [
        "prompt 0",
        "add please 1",
        "prompt 2",
        "add please 3",
        "prompt 4",
        "add please 5",
        "queued 6",
        "queued 7",
        "queued 8",
        "queued 9",
    ]
    assert all(t.metadata.status == InferenceStatus.COMPLETED for t in turns)
    assert [t.last_text for t in turns][:2] == [
        "echo prompt 0",
        'sum {"expression": "40 + 2", "result": 42}',
    ]
    # Turns are cumulative across runs: each one extends the previous one.
    for before, after in itertools.pairwise(turns):
        assert after.blocks[: len(before.blocks)] == before.blocks
    # Inference ids keep counting across runs, so no child id is ever reused.
    assert [t.metadata.inference_id for t in turns] == [
        f"{session.session_id}/inference/{n}" for n in range(1, 11)
    ]
    # Handles and event streams of inferences from earlier runs still work.
    first = handles[0]
    assert (await first.wait()).last_text == "echo prompt 0"
    finals = [e for e in [e async for e in first.events()] if isinstance(e, FinalEvent)]
    assert [f.text for f in finals] == ["echo prompt 0"]
    # The model saw the whole conversation after the last continue-as-new.
    last_request = model_server.requests(base_url)[-1].body["messages"]
    assert last_request[0] == {"role": "user", "content": "prompt 0"}
    # And the session still takes prompts and closes cleanly.
    assert (
        await (await session.start_inference("still there?")).wait()
    ).last_text == "echo still there?"
    summary = await session.close()
    assert summary.turn_count == 11


async def test_busy_rejection_and_updates_across_boundaries(
    can_client: Client, model_server: ScriptedModelServer
) -> None:
    """Prompts fired back to back land on whichever run is current; none is lost. In each run,
    a prompt sent while another runs is rejected as busy, and the session goes on."""
    base_url = model_server.add_script(SCRIPT)
    session = await Session.create(
        can_client,
        EngineBuilder("openai:scripted").base_url(base_url),
        session_id=f"can-burst-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
    )
    texts: list[str] = []
    prompts: list[str] = []
    busy_in_runs: list[str] = []
    for i in range(12):
        run_id = (await session.workflow_handle.describe()).run_id
        if run_id not in busy_in_runs:
            # First prompt in this run: a slow one, and a second prompt while it runs.
            slow = await session.start_inference(f"slow {i}")
            with pytest.raises(SessionBusyError) as busy:
                await session.start_inference(f"too soon {i}")
            assert busy.value.active_inference_id == slow.inference_id
            assert busy.value.session_id == session.session_id
            busy_in_runs.append(run_id)
            await slow.cancel()
            with pytest.raises(InferenceCancelled):
                await slow.wait()
            prompts.append(f"slow {i}")
        texts.append((await (await session.start_inference(f"burst {i}")).wait()).last_text)
        prompts.append(f"burst {i}")
    assert texts == [f"echo burst {i}" for i in range(12)]
    assert await runs_of(can_client, session.session_id) >= 3
    assert len(busy_in_runs) >= 3, "busy rejections in three runs or more"
    turns = await session.turns()
    # The rejected prompts left no turn; the cancelled ones did.
    assert [t.prompt for t in turns] == prompts
    assert [t.metadata.status for t in turns] == [
        InferenceStatus.CANCELLED if p.startswith("slow") else InferenceStatus.COMPLETED
        for p in prompts
    ]


async def test_worker_killed_around_continue_as_new_loses_nothing(
    can_client: Client, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """SIGKILL of the only worker process when a continue-as-new is due, and again just after
    a new run began: every queued prompt is still answered exactly once, in order."""
    base_url = model_server.add_script(SCRIPT)
    queue = unique_queue("can-crash")
    procs = WorkerProcs(
        address=can_client.service_client.config.target_host,
        logs=tmp_path,
        endpoints=scripted_endpoints_env(model_server.url),
    )
    try:
        worker = await procs.start(queue)
        session = await Session.create(
            can_client,
            # Short heartbeats: a killed worker's activity is retried within seconds.
            EngineBuilder("openai:scripted")
            .base_url(base_url)
            .llm_activity(heartbeat_seconds=2)
            .tool_heartbeat(2),
            session_id=f"can-crash-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        prompts = [f"add please {i}" if i % 3 == 1 else f"crash {i}" for i in range(9)]
        for i, prompt in enumerate(prompts):
            await session.submit_prompt(prompt, idempotency_key=f"k{i}")
        workflow = can_client.get_workflow_handle(session.session_id)

        async def due() -> str | None:
            """The current run's id once its history is past the continue-as-new suggestion."""
            described = await workflow.describe()
            return described.run_id if described.history_length >= SUGGEST_AFTER_EVENTS else None

        run_when_due = await wait_until(due, 60, "a continue-as-new to be due", procs.diagnostics)
        worker.kill()
        worker = procs.spawn(queue)

        async def next_run() -> str | None:
            run_id = (await workflow.describe()).run_id
            return run_id if run_id != run_when_due else None

        await wait_until(next_run, 90, "the next run", procs.diagnostics)
        worker.kill()
        procs.spawn(queue)

        async def all_answered() -> bool:
            status = await session.status()
            return status.turn_count == len(prompts) and status.active_inference_id is None

        await wait_until(all_answered, 120, "every prompt answered", procs.diagnostics)
        turns = await session.turns()
        assert [t.prompt for t in turns] == prompts
        assert all(t.metadata.status == InferenceStatus.COMPLETED for t in turns)
        assert [t.metadata.inference_id for t in turns] == [
            f"{session.session_id}/inference/{n}" for n in range(1, len(prompts) + 1)
        ]
        expected = [
            'sum {"expression": "40 + 2", "result": 42}' if "add" in p else f"echo {p}"
            for p in prompts
        ]
        assert [t.last_text for t in turns] == expected
        # No block lost or doubled by a retried step: each turn adds its prompt and its answer
        # (and, for the tool prompts, one call and one result).
        previous: list[Any] = []
        for turn in turns:
            assert turn.blocks[: len(previous)] == previous
            added = len(turn.blocks) - len(previous)
            assert added == (4 if "add" in turn.prompt else 2), (
                turn.prompt,
                turn.blocks[len(previous) :],
            )
            previous = turn.blocks
        assert await runs_of(can_client, session.session_id) >= 2
        assert (await (await session.start_inference("after")).wait()).last_text == "echo after"
        await session.close()
    finally:
        procs.kill_all()


async def test_compaction_goes_on_across_a_sessions_continue_as_new(
    can_client: Client, model_server: ScriptedModelServer
) -> None:
    # A model with a small window: without compaction the fourth prompt would be refused.
    base_url = model_server.add_script(
        {"context_window": 1000, "rules": [{"name": "ack", "reply": {"text": "Noted."}}]}
    )
    session = await Session.create(
        can_client,
        EngineBuilder("openai:scripted").base_url(base_url).no_tools().context_window(1000),
        session_id=f"can-ctx-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
    )
    prompts = [f"Prompt {n}: " + f"word{n} " * 200 for n in range(8)]
    for prompt in prompts:
        assert (await (await session.start_inference(prompt)).wait()).last_text == "Noted."
    assert await runs_of(can_client, session.session_id) >= 2, "expected a continue-as-new"
    assert {r.status for r in model_server.requests(base_url)} == {200}
    last = model_server.requests(base_url)[-1].body["messages"]
    assert last[-1] == {"role": "user", "content": prompts[-1]}
    assert len([m for m in last if m["role"] == "user"]) < len(prompts)
    users = [b.text for b in (await session.transcript()).blocks if b.kind == "user"]
    assert users == prompts
    # The new run carried the reference to the decision in force, not the decision.
    history = await session.workflow_handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [carried] = await can_client.data_converter.decode(started.input.payloads, [SessionInput])
    assert isinstance(carried, SessionInput) and carried.state.context_from is not None
    assert carried.state.context_from.startswith(f"{session.session_id}/inference/")
    await session.close()
