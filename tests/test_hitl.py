"""Human in the loop, continued: budget pauses, session budgets, a deadline that approves,
step mode switched at run time, the `GeppettoWaitingOn` search attribute and `geppetto chat`
asking for approvals inline. Real dev server and worker (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from typing import Any

import pytest
from rich.console import Console
from temporalio.client import Client, WorkflowHandle

from geppetto_temporal import (
    Budget,
    BudgetExceeded,
    EngineBuilder,
    ExecutionHandle,
    InferenceStatus,
    Session,
    search,
)
from geppetto_temporal._cli_sessions import print_session_list
from geppetto_temporal.chat import Chat, LineReader
from geppetto_temporal.dashboard import list_session_rows
from geppetto_temporal.dashboard._charts import waiting_sessions
from geppetto_temporal.events import ApprovalDecidedEvent, ApprovalRequestedEvent
from geppetto_temporal.sessions import list_sessions, waiting_on_person
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import PayloadKey
from tests import toolbox
from tests.conftest import TASK_QUEUE
from tests.scripts import calls_then_answer
from tests.test_approvals import assert_replays, guarded, key, paused_at, pending, tool_uses

CALC = {"name": "calculate", "arguments": {"expression": "6 * 7"}}


async def waiting_attribute(handle: WorkflowHandle[Any, Any]) -> str | None:
    """`GeppettoWaitingOn` of a workflow as Temporal holds it now (describe, not visibility)."""
    return (await handle.describe()).typed_search_attributes.get(search.WAITING_ON)


async def until(check: Any, what: str) -> Any:
    """Poll an async check until it answers something truthy (visibility lags ~1 s)."""
    for _ in range(300):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    pytest.fail(f"never: {what}")


async def test_a_budget_that_pauses_asks_and_approve_goes_on_deny_stops(
    client: Client, new_session: Any
) -> None:
    # Two calls in the first step, one tool call allowed: over budget before the tools run.
    script = calls_then_answer(CALC, CALC, answer="Saw {tool_results}")

    def pausing(b: EngineBuilder) -> EngineBuilder:
        return b.budget(max_tool_calls=1, on_exceeded="pause")

    go_on, _ = await new_session(script, configure=pausing)
    stop, _ = await new_session(script, configure=pausing)
    approved = await go_on.start_inference("compute twice")
    denied = await stop.start_inference("compute twice")
    [ask] = await pending(approved)
    assert (ask.kind, ask.tool, ask.call_id) == ("budget", "budget", "budget:1")
    why = "budget exceeded: 2 tool calls requested, max_tool_calls is 1"
    assert ask.arguments == {"reason": why}
    [other] = await pending(denied)

    # Operators see both sessions waiting on a person, everywhere they look.
    assert await waiting_attribute(approved.workflow_handle) == "budget"
    waiting = await until(
        lambda: _both_waiting(client, go_on, stop), "visibility lists both as waiting"
    )
    assert waiting[go_on.session_id] == waiting[stop.session_id] == "budget"
    listed = {s.session_id: s for s in await list_sessions(client, status="running")}
    assert listed[go_on.session_id].waiting_on == "budget"
    out = Console(file=io.StringIO(), width=300)
    print_session_list(out, [listed[go_on.session_id]])
    assert "waiting on a person: budget" in out.file.getvalue()  # type: ignore[attr-defined]
    rows = {r.session_id: r for r in await list_session_rows(client)}
    assert rows[stop.session_id].waiting_on == "budget"
    chart = await waiting_sessions(client)
    assert {b.label: b.value for b in chart.bars}["budget"] >= 2

    await approved.approve(ask.call_id, remember=True)
    await denied.deny(other.call_id, reason="too expensive")
    turn = await approved.wait()
    assert [u.payload[PayloadKey.RESULT]["result"] for u in tool_uses(turn.blocks)] == [42, 42]
    assert (await approved.result()).approved_tools == []  # "remember" is for tools only
    with pytest.raises(BudgetExceeded) as info:
        await denied.wait()
    assert str(info.value).endswith(f"{why} (denied: too expensive)"), str(info.value)
    stopped = info.value.turn
    assert stopped is not None and stopped.metadata.status == InferenceStatus.BUDGET_EXCEEDED
    assert [u.payload[PayloadKey.ERROR] for u in tool_uses(stopped.blocks)] == [
        f"not run: {why} (denied: too expensive)"
    ] * 2
    # Decided: nobody is waited on any more.
    assert await waiting_attribute(approved.workflow_handle) is None
    assert await waiting_attribute(denied.workflow_handle) is None
    requested = [e async for e in approved.events() if isinstance(e, ApprovalRequestedEvent)]
    assert [(e.kind, e.tool_call.input) for e in requested] == [("budget", why)]
    decided = [e async for e in approved.events() if isinstance(e, ApprovalDecidedEvent)]
    assert [(e.tool_call_id, e.approved, e.remember) for e in decided] == [
        ("budget:1", True, False)
    ]
    # The waiting attribute costs one upsert when the wait starts and one when it ends
    # (the inference's one other upsert is its outcome, as it ends).
    history = await approved.workflow_handle.fetch_history()
    upserts = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        for e in history.events
        if e.HasField("upsert_workflow_search_attributes_event_attributes")
    ]
    assert len([u for u in upserts if "GeppettoWaitingOn" in u]) == 2, upserts
    assert len(upserts) == 3, upserts
    await assert_replays(approved.workflow_handle, denied.workflow_handle)


async def _both_waiting(client: Client, *sessions: Session) -> dict[str, str] | None:
    waiting = await waiting_on_person(client)
    return waiting if all(s.session_id in waiting for s in sessions) else None


async def test_session_budgets_count_every_inference_and_show_in_status(
    client: Client, model_server: ScriptedModelServer, worker: Any
) -> None:
    base_url = model_server.add_script(calls_then_answer(CALC, answer="Saw {tool_results}"))
    engine = EngineBuilder("openai:scripted").base_url(base_url).llm_activity(heartbeat_seconds=5)

    async def create(budget: Budget) -> Session:
        return await Session.create(
            client,
            engine,
            session_id=f"test-{uuid.uuid4().hex[:10]}",
            task_queue=TASK_QUEUE,
            budget=budget,
        )

    async def stops() -> None:
        session = await create(Budget(max_tool_calls=1))
        await (await session.start_inference("one")).wait()
        status = await session.status()
        assert status.budget == Budget(max_tool_calls=1)
        assert status.tool_calls == 1 and status.usage.total_tokens > 0
        with pytest.raises(BudgetExceeded) as info:
            await (await session.start_inference("two")).wait()
        assert "session budget exceeded: 2 tool calls requested, max_tool_calls is 1" in str(
            info.value
        )
        status = await session.status()
        assert status.tool_calls == 1 and status.turn_count == 2  # the refused call never ran

    async def pauses() -> None:
        session = await create(Budget(max_tool_calls=1, on_exceeded="pause"))
        await (await session.start_inference("one")).wait()
        second = await session.start_inference("two")
        [ask] = await pending(second)
        assert ask.kind == "budget" and "session budget exceeded" in ask.arguments["reason"]
        await second.approve(ask.call_id)
        turn = await second.wait()
        assert turn.last_text == 'Saw {"expression": "6 * 7", "result": 42}'
        assert (await session.status()).tool_calls == 2
        await assert_replays(second.workflow_handle, session.workflow_handle)

    await asyncio.gather(stops(), pauses())


async def test_a_deadline_can_approve_instead_of_deny(new_session: Any) -> None:
    k = key()
    session, _ = await new_session(
        calls_then_answer(guarded(k), answer="Saw {tool_results}"),
        configure=lambda b: b.approval_timeout(0.5, on_timeout="approve"),
    )
    handle = await session.start_inference("do it")
    turn = await handle.wait()  # nobody decides
    assert toolbox.GUARDED_RUNS[k] == 1
    assert tool_uses(turn.blocks)[0].payload[PayloadKey.RESULT] == {"done": k}
    decided = [e async for e in handle.events() if isinstance(e, ApprovalDecidedEvent)]
    assert [(e.approved, e.reason) for e in decided] == [
        (True, "approved: no decision within 0.5 s")
    ]


async def test_step_mode_switched_on_and_off_at_run_time(new_session: Any) -> None:
    k = key()
    session, _ = await new_session(calls_then_answer(guarded(k), answer="Saw {tool_results}"))
    handle = await session.start_inference("first")
    [ask] = await pending(handle)  # holds the loop still while step mode is switched on
    assert await session.set_step_mode(True) == handle.inference_id
    await handle.approve(ask.call_id)
    pause = await paused_at(handle, "after_tools:1")  # the engine had no step mode
    assert pause.phase == "after_tools"
    assert await waiting_attribute(handle.workflow_handle) == "step"
    await handle.set_step_mode(False)  # off: ends the pause, and no more pauses
    turn = await handle.wait()
    assert turn.last_text == f'Saw {{"done": "{k}"}}'
    assert await waiting_attribute(handle.workflow_handle) is None
    # The session's next prompts keep step mode (switched on for the session) ...
    again = await session.start_inference("second")
    await paused_at(again, "after_inference:1")
    # ... until it is switched off there too, which releases the running inference.
    assert await session.set_step_mode(False) == again.inference_id
    [ask] = await pending(again)
    await again.approve(ask.call_id)
    await again.wait()
    assert (await session.engine()).step_mode is False
    await assert_replays(handle.workflow_handle, again.workflow_handle, session.workflow_handle)


async def test_chat_asks_inline_for_approvals(new_session: Any) -> None:
    keys = {word: key() for word in ("first", "second", "third", "fourth")}
    session, _ = await new_session(
        {
            "rules": [
                *(
                    {
                        "name": word,
                        "when": {"last_role": "user", "last_user_contains": word},
                        "reply": {"tool_calls": [guarded(k)]},
                    }
                    for word, k in keys.items()
                ),
                {
                    "name": "answer",
                    "when": {"last_role": "tool"},
                    "reply": {"text": "Saw {tool_results}"},
                },
            ]
        }
    )
    # Piped input, as `geppetto chat < answers.txt`: prompts, and answers when a call waits.
    shown, errors = await chat_with(
        session, "first\ny\nsecond\nn not today\nthird\nmaybe\na\nfourth\n"
    )
    first, second, third, fourth = keys.values()
    assert (
        toolbox.GUARDED_RUNS.get(first),
        toolbox.GUARDED_RUNS.get(second),
        toolbox.GUARDED_RUNS.get(third),
        toolbox.GUARDED_RUNS.get(fourth),
    ) == (1, None, 1, 1), shown
    question = "? run guarded_tool(key={!r})? [y]es / [n]o [reason] / [a]lways: "
    order = [
        "you> first",
        question.format(first).replace("'", '"') + "y",
        "✓ approved",
        f'Saw {{"done": "{first}"}}',
        "you> second",
        question.format(second).replace("'", '"') + "n not today",
        "✗ denied: not today",
        'Saw {"error": "denied: not today"}',
        "you> third",
        question.format(third).replace("'", '"') + "maybe",
        question.format(third).replace("'", '"') + "a",
        "✓ approved for the rest of the session",
        "you> fourth",
        f'Saw {{"done": "{fourth}"}}',
    ]
    position = 0
    for part in order:
        found = shown.find(part, position)
        assert found >= 0, f"{part!r} missing after {position} in:\n{shown}"
        position = found + len(part)
    # The fourth call ran without asking: the tool was approved for the session.
    assert shown.count("? run guarded_tool") == 4, shown
    assert "answer [y]es / [n]o [reason] / [a]lways" in errors
    turns = await session.turns()
    assert [t.metadata.status for t in turns] == [InferenceStatus.COMPLETED] * 4
    handle = ExecutionHandle(session.client, turns[-1].metadata.inference_id or "")
    assert not [e async for e in handle.events() if isinstance(e, ApprovalRequestedEvent)]


async def chat_with(session: Session, lines: str) -> tuple[str, str]:
    """Run `geppetto chat`'s loop on `session` with piped `lines`; what it printed (out, err)."""
    read_end, write_end = os.pipe()
    os.write(write_end, lines.encode())
    os.close(write_end)
    out, err = io.StringIO(), io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    err_console = Console(file=err, width=200, color_system=None)
    with os.fdopen(read_end) as stdin:
        reader = LineReader(stdin)
        try:
            await asyncio.wait_for(Chat(session, console, err_console, reader).run(), 90)
        finally:
            reader.close()
    return out.getvalue(), err.getvalue()


async def test_chat_continues_step_mode_pauses_with_enter(new_session: Any) -> None:
    session, _ = await new_session(
        calls_then_answer(CALC, answer="Saw {tool_results}"), configure=lambda b: b.step_mode()
    )
    shown, _ = await chat_with(session, "compute\n\n\n")
    position = 0
    for part in (
        "you> compute",
        "[paused after_inference: 1 tool call(s): calculate] Enter continues: ",
        "[paused after_tools: 1 tool result(s)] Enter continues: ",
        'Saw {"expression": "6 * 7", "result": 42}',
    ):
        found = shown.find(part, position)
        assert found >= 0, f"{part!r} missing after {position} in:\n{shown}"
        position = found + len(part)
    [turn] = await session.turns()
    assert turn.metadata.status == InferenceStatus.COMPLETED
