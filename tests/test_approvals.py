"""Human in the loop: tool approvals (approve, deny, remember, deadline, cancel), budgets, step mode."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from geppetto_temporal import BlockKind, EngineBuilder, ExecutionHandle, InferenceStatus, Session
from geppetto_temporal.contract import PendingApproval, StepPause
from geppetto_temporal.errors import (
    ApprovalNotPendingError,
    BudgetExceeded,
    InferenceCancelled,
    NotPausedError,
)
from geppetto_temporal.events import (
    ApprovalDecidedEvent,
    ApprovalRequestedEvent,
    DebuggerPauseEvent,
)
from geppetto_temporal.pricing import ModelPrice, price_table, set_price_table
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import Block, PayloadKey
from geppetto_temporal.worker._worker import WORKFLOWS
from tests import toolbox
from tests.scripts import calls_then_answer
from tests.test_replay import replayer
from tests.workers import WorkerProcs, activity_starts, unique_queue, within


def guarded(key: str) -> dict[str, Any]:
    return {"name": "guarded_tool", "arguments": {"key": key}}


def key() -> str:
    return uuid.uuid4().hex[:10]


def tool_uses(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.kind == BlockKind.TOOL_USE]


async def pending(handle: ExecutionHandle, count: int = 1) -> list[PendingApproval]:
    """Poll until `count` calls wait for a decision (generous: the machine is shared)."""
    for _ in range(600):
        waiting = await handle.pending_approvals()
        if len(waiting) >= count:
            return waiting
        await asyncio.sleep(0.05)
    pytest.fail(f"{handle.inference_id}: never {count} pending approvals")


async def assert_replays(*handles: WorkflowHandle[Any, Any]) -> None:
    """The recorded histories replay on a replayer configured like the worker."""
    for handle in handles:
        history = await handle.fetch_history()
        result = await replayer(WORKFLOWS).replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, (handle.id, result.replay_failure)


async def history_length(handle: ExecutionHandle) -> int:
    return len((await handle.workflow_handle.fetch_history()).events)


async def test_approve_runs_the_tool_once_and_waiting_costs_no_history(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    k = key()
    session, _ = await new_session(calls_then_answer(guarded(k), answer="Saw {tool_results}"))
    handle = await session.start_inference("do it")
    [waiting] = await pending(handle)
    assert waiting.tool == "guarded_tool"
    assert waiting.arguments == {"key": k}
    assert waiting.deadline is None
    assert waiting.inference_id == handle.inference_id
    assert toolbox.GUARDED_RUNS.get(k) is None
    # While it waits the workflow schedules nothing: the history does not grow.
    before = await history_length(handle)
    await asyncio.sleep(2.0)
    assert await history_length(handle) == before
    await handle.approve(waiting.call_id)
    turn = await handle.wait()
    assert toolbox.GUARDED_RUNS[k] == 1
    [use] = tool_uses(turn.blocks)
    assert use.call_id == waiting.call_id
    assert use.payload[PayloadKey.RESULT] == {"done": k}
    assert turn.last_text == f'Saw {{"done": "{k}"}}'
    # Once decided (and ended), the same call id is refused with the typed error.
    with pytest.raises(ApprovalNotPendingError) as info:
        await handle.approve(waiting.call_id)
    assert info.value.call_id == waiting.call_id
    events = [e async for e in handle.events()]
    requested = [e for e in events if isinstance(e, ApprovalRequestedEvent)]
    decided = [e for e in events if isinstance(e, ApprovalDecidedEvent)]
    assert [e.tool_call.id for e in requested] == [waiting.call_id]
    assert [(e.tool_call_id, e.approved) for e in decided] == [(waiting.call_id, True)]
    assert await handle.pending_approvals() == []


async def test_deny_never_runs_and_the_model_sees_the_reason(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    # The engine's policy (a pattern), on a tool that does not ask for approval itself.
    session, base_url = await new_session(
        calls_then_answer(
            {"name": "calculate", "arguments": {"expression": "6 * 7"}}, answer="Saw {tool_results}"
        ),
        configure=lambda b: b.require_approval("calc*", "delete_*"),
    )
    handle = await session.start_inference("compute")
    [waiting] = await pending(handle)
    assert waiting.tool == "calculate"
    await handle.deny(waiting.call_id, reason="not today")
    turn = await handle.wait()
    [use] = tool_uses(turn.blocks)
    assert use.payload[PayloadKey.ERROR] == "denied: not today"
    assert PayloadKey.RESULT not in use.payload or use.payload[PayloadKey.RESULT] is None
    tool_messages = [
        m["content"]
        for r in model_server.requests(base_url)
        for m in r.body.get("messages", [])
        if m.get("role") == "tool"
    ]
    assert [json.loads(m) for m in tool_messages] == [{"error": "denied: not today"}]
    with pytest.raises(ApprovalNotPendingError):
        await handle.deny(waiting.call_id, reason="again")


async def test_parallel_calls_are_decided_each_on_its_own_in_call_order(
    new_session: Any,
) -> None:
    a, b, c = key(), key(), key()
    session, _ = await new_session(
        calls_then_answer(guarded(a), guarded(b), guarded(c), answer="Saw {tool_results}")
    )
    handle = await session.start_inference("three things")
    waiting = await pending(handle, 3)
    assert [w.arguments["key"] for w in waiting] == [a, b, c]
    with pytest.raises(ApprovalNotPendingError):
        await handle.approve("call_that_does_not_exist")
    # Decided out of order; one of them twice (refused: it is no longer pending).
    await handle.approve(waiting[2].call_id)
    with pytest.raises(ApprovalNotPendingError):
        await handle.deny(waiting[2].call_id, reason="changed my mind")
    await handle.deny(waiting[1].call_id, reason="not b")
    assert [w.call_id for w in await handle.pending_approvals()] == [waiting[0].call_id]
    await handle.approve(waiting[0].call_id)
    turn = await handle.wait()
    uses = tool_uses(turn.blocks)
    assert [u.call_id for u in uses] == [w.call_id for w in waiting]
    assert uses[0].payload[PayloadKey.RESULT] == {"done": a}
    assert uses[1].payload[PayloadKey.ERROR] == "denied: not b"
    assert uses[2].payload[PayloadKey.RESULT] == {"done": c}
    assert (toolbox.GUARDED_RUNS.get(a), toolbox.GUARDED_RUNS.get(b)) == (1, None)
    assert toolbox.GUARDED_RUNS.get(c) == 1
    await assert_replays(handle.workflow_handle)


async def test_approve_and_remember_for_the_rest_of_the_session(new_session: Any) -> None:
    first, second = key(), key()
    session, _ = await new_session(
        {
            "rules": [
                {
                    "name": "first",
                    "when": {"last_role": "user", "last_user_contains": "first"},
                    "reply": {"tool_calls": [guarded(first)]},
                },
                {
                    "name": "second",
                    "when": {"last_role": "user", "last_user_contains": "second"},
                    "reply": {"tool_calls": [guarded(second)]},
                },
                {"name": "answer", "when": {"last_role": "tool"}, "reply": {"text": "ok"}},
            ]
        }
    )
    handle = await session.start_inference("first")
    [waiting] = await pending(handle)
    await handle.approve(waiting.call_id, remember=True)
    await handle.wait()
    assert (await handle.result()).approved_tools == ["guarded_tool"]
    # The next inference of the session runs the tool without asking.
    again = await session.start_inference("second")
    turn = await again.wait()
    assert toolbox.GUARDED_RUNS[second] == 1
    assert tool_uses(turn.blocks)[-1].payload[PayloadKey.RESULT] == {"done": second}
    assert not [e async for e in again.events() if isinstance(e, ApprovalRequestedEvent)]
    await assert_replays(handle.workflow_handle, again.workflow_handle, session.workflow_handle)


async def test_an_undecided_call_is_denied_at_the_deadline(new_session: Any) -> None:
    k = key()
    session, _ = await new_session(
        calls_then_answer(guarded(k), answer="Saw {tool_results}"),
        configure=lambda b: b.approval_timeout(1),
    )
    handle = await session.start_inference("do it")
    [waiting] = await pending(handle)
    assert waiting.deadline is not None and waiting.deadline > waiting.asked_at
    turn = await handle.wait()
    [use] = tool_uses(turn.blocks)
    assert use.payload[PayloadKey.ERROR] == "denied: no decision within 1 s"
    assert toolbox.GUARDED_RUNS.get(k) is None
    with pytest.raises(ApprovalNotPendingError):
        await handle.approve(waiting.call_id)


async def test_cancel_while_waiting_ends_the_inference_cleanly(new_session: Any) -> None:
    a, b = key(), key()
    session, _ = await new_session(
        calls_then_answer(guarded(a), guarded(b), answer="Saw {tool_results}")
    )
    handle = await session.start_inference("two things")
    waiting = await pending(handle, 2)
    await handle.cancel()
    with pytest.raises(InferenceCancelled) as info:
        await handle.wait()
    turn = info.value.turn
    assert turn is not None and turn.metadata.status == InferenceStatus.CANCELLED
    uses = tool_uses(turn.blocks)
    assert [u.call_id for u in uses] == [w.call_id for w in waiting]
    assert [u.payload[PayloadKey.ERROR] for u in uses] == ["cancelled before it ran"] * 2
    assert toolbox.GUARDED_RUNS.get(a) is None and toolbox.GUARDED_RUNS.get(b) is None
    # The session took the partial turn and is usable again.
    assert (await session.status()).active_inference_id is None


# ---- budgets ----------------------------------------------------------------------------------

PRICE = ModelPrice(input=1000, output=2000)  # USD per million tokens: visible costs


@pytest.fixture
def priced_model() -> Iterator[str]:
    # The `new_session` engine's model, priced while this test runs.
    set_price_table(price_table().merged({"scripted": PRICE}))
    yield "scripted"
    set_price_table(None)


async def test_each_budget_stops_the_loop_with_budget_exceeded(
    new_session: Any, priced_model: str
) -> None:
    # A model that calls `calculate` forever, 110 tokens a step.
    looping_priced = {
        "rules": [
            {
                "name": "loop",
                "reply": {
                    "tool_calls": [{"name": "calculate", "arguments": {"expression": "1 + 1"}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10},
                },
            }
        ]
    }
    scenarios = {
        # 110 tokens a step: over 250 after the third.
        "tokens": (lambda b: b.budget(max_total_tokens=250), 3, "max_total_tokens is 250"),
        # $0.12 a step: over $0.2 after the second.
        "cost": (
            lambda b: b.budget(max_cost_usd=0.2),
            2,
            "max_cost_usd is $0.200000",
        ),
        # One call a step: the fifth would be one too many.
        "tool calls": (lambda b: b.budget(max_tool_calls=4), 5, "max_tool_calls is 4"),
    }

    async def run(configure: Any) -> BudgetExceeded:
        session, _ = await new_session(
            looping_priced, configure=lambda b: configure(b).max_iterations(10)
        )
        handle = await session.start_inference("loop")
        with pytest.raises(BudgetExceeded) as info:
            await handle.wait()
        stored = (await session.turns())[-1]
        assert stored.metadata.status == InferenceStatus.BUDGET_EXCEEDED
        return info.value

    errors = await asyncio.gather(*(run(c) for c, _, _ in scenarios.values()))
    for (name, (_, steps, why)), err in zip(scenarios.items(), errors, strict=True):
        turn = err.turn
        assert turn is not None, name
        assert turn.metadata.status == InferenceStatus.BUDGET_EXCEEDED, name
        assert why in str(err), (name, str(err))
        calls = [b for b in turn.blocks if b.kind == BlockKind.TOOL_CALL]
        uses = tool_uses(turn.blocks)
        assert len(calls) == steps, name
        # The last step's call was answered, not run: the turn stays a valid conversation.
        assert len(uses) == steps, name
        assert str(uses[-1].payload[PayloadKey.ERROR]).startswith("not run: budget exceeded")
        assert all(PayloadKey.ERROR not in u.payload for u in uses[:-1]), name
        assert (turn.metadata.error or "").startswith("budget exceeded: "), name


# ---- the command line --------------------------------------------------------------------------

_SCRIPT = Path(sys.executable).with_name("geppetto")
GEPPETTO = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "geppetto_temporal.cli"]


async def test_cli_lists_approves_and_denies(
    new_session: Any, temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_", "GEPPETTO_", "OPENAI_", "ANTHROPIC_"))
    }
    # A pure client of the tests' server: the in-process test worker runs the workflows.
    env.update(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        GEPPETTO_HOME=str(tmp_path / "home"),
        COLUMNS="200",
    )

    def geppetto(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*GEPPETTO, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
        )

    a, b = key(), key()
    session, _ = await new_session(
        calls_then_answer(guarded(a), guarded(b), answer="Saw {tool_results}")
    )
    handle = await session.start_inference("two things")
    waiting = await pending(handle, 2)
    # By session id: its running inference's calls.
    listed = await asyncio.to_thread(geppetto, "approvals", session.session_id, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(p["call_id"], p["tool"]) for p in json.loads(listed.stdout)] == [
        (w.call_id, "guarded_tool") for w in waiting
    ]
    shown = await asyncio.to_thread(geppetto, "approvals", handle.inference_id)
    assert shown.returncode == 0, shown.stderr
    assert [line.split()[1] for line in shown.stdout.splitlines()] == [w.call_id for w in waiting]
    ok = await asyncio.to_thread(
        geppetto, "approve", handle.inference_id, waiting[0].call_id, "--remember"
    )
    assert ok.returncode == 0, ok.stderr
    assert f"approved {waiting[0].call_id}" in ok.stdout
    no = await asyncio.to_thread(
        geppetto, "deny", session.session_id, waiting[1].call_id, "--reason", "no way"
    )
    assert no.returncode == 0, no.stderr
    turn = await handle.wait()
    uses = tool_uses(turn.blocks)
    assert uses[0].payload[PayloadKey.RESULT] == {"done": a}
    assert uses[1].payload[PayloadKey.ERROR] == "denied: no way"
    assert (await handle.result()).approved_tools == ["guarded_tool"]
    # A decision on a call that no longer waits: one error line, exit 1, no traceback.
    again = await asyncio.to_thread(geppetto, "deny", handle.inference_id, waiting[0].call_id)
    assert again.returncode == 1
    [line] = [x for x in again.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ") and "is not waiting for a decision" in line, line


# ---- step mode ---------------------------------------------------------------------------------


async def paused_at(handle: ExecutionHandle, pause_id: str) -> StepPause:
    for _ in range(600):
        pause = await handle.paused()
        if pause is not None and pause.pause_id == pause_id:
            return pause
        await asyncio.sleep(0.05)
    pytest.fail(f"{handle.inference_id}: never paused at {pause_id}")


async def test_step_mode_pauses_after_the_step_and_after_the_tools(new_session: Any) -> None:
    k = f"step-{key()}"
    session, _ = await new_session(
        calls_then_answer(
            {"name": "blocking_tool", "arguments": {"key": k, "seconds": 0}},
            answer="Saw {tool_results}",
        ),
        configure=lambda b: b.step_mode(),
    )
    handle = await session.start_inference("step through")
    first = await paused_at(handle, "after_inference:1")
    assert first.phase == "after_inference" and "blocking_tool" in first.summary
    assert first.deadline is None
    # Paused before the tool: it has not run.
    assert k not in toolbox.STARTED
    with pytest.raises(NotPausedError):
        await handle.continue_step("after_tools:1")  # not where it is paused
    await handle.continue_step("after_inference:1")
    await paused_at(handle, "after_tools:1")
    assert k in toolbox.STARTED
    await handle.continue_step()
    turn = await handle.wait()
    assert turn.last_text == 'Saw {"slept": 0.0}'
    pauses = [e async for e in handle.events() if isinstance(e, DebuggerPauseEvent)]
    assert [(e.pause_id, e.phase) for e in pauses] == [
        ("after_inference:1", "after_inference"),
        ("after_tools:1", "after_tools"),
    ]
    with pytest.raises(NotPausedError):
        await handle.continue_step()
    await assert_replays(handle.workflow_handle)


async def test_step_mode_auto_continues_and_cancel_while_paused(new_session: Any) -> None:
    script = calls_then_answer(
        {"name": "calculate", "arguments": {"expression": "6 * 7"}}, answer="Saw {tool_results}"
    )

    async def auto() -> None:
        session, _ = await new_session(
            script, configure=lambda b: b.step_mode(auto_continue_seconds=0.5)
        )
        handle = await session.start_inference("auto")
        turn = await handle.wait()  # nobody continues: each pause ends by itself
        assert turn.last_text == 'Saw {"expression": "6 * 7", "result": 42}'
        pauses = [e async for e in handle.events() if isinstance(e, DebuggerPauseEvent)]
        assert [e.phase for e in pauses] == ["after_inference", "after_tools"]
        assert all(e.deadline is not None for e in pauses)

    async def cancel() -> None:
        session, _ = await new_session(script, configure=lambda b: b.step_mode())
        handle = await session.start_inference("cancel")
        await paused_at(handle, "after_inference:1")
        await handle.cancel()
        with pytest.raises(InferenceCancelled) as info:
            await handle.wait()
        turn = info.value.turn
        assert turn is not None
        [use] = tool_uses(turn.blocks)
        assert use.payload[PayloadKey.ERROR] == "cancelled before it ran"

    await asyncio.gather(auto(), cancel())


# ---- durability: real worker processes ---------------------------------------------------------


async def test_a_pending_approval_survives_sigkill_and_a_decision_made_without_a_worker(
    client: Client, model_server: ScriptedModelServer, worker_procs: WorkerProcs
) -> None:
    queue = unique_queue("approvals-crash")
    first = await worker_procs.start(queue)
    k = key()
    base_url = model_server.add_script(calls_then_answer(guarded(k), answer="Saw {tool_results}"))
    engine = EngineBuilder("openai:scripted").base_url(base_url).llm_activity(heartbeat_seconds=5)
    session = await Session.create(client, engine, session_id=f"test-{key()}", task_queue=queue)
    handle = await session.start_inference("do it")
    [waiting] = await pending(handle)
    first.kill()  # SIGKILL: no shutdown code runs
    # Decided while no worker runs: the update waits for one, and is applied once.
    decision = asyncio.create_task(handle.approve(waiting.call_id))
    await asyncio.sleep(0.5)
    assert not decision.done()
    await worker_procs.start(queue)
    decided = await within(decision, 60, "the approval to be applied", worker_procs.diagnostics)
    assert decided.call_id == waiting.call_id
    turn = await within(handle.wait(), 60, "the inference to finish", worker_procs.diagnostics)
    [use] = tool_uses(turn.blocks)
    assert use.payload[PayloadKey.RESULT] == {"done": k}
    tool_runs = [
        s for s in await activity_starts(handle.workflow_handle) if s[0] == "geppetto.tool_call"
    ]
    assert [attempt for _, _, attempt in tool_runs] == [1], tool_runs
    with pytest.raises(ApprovalNotPendingError):
        await handle.approve(waiting.call_id)
