"""Closing a session, switching engines between prompts, and creating sessions by id."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.client import Client, WorkflowUpdateStage

from geppetto_temporal import (
    EngineBuilder,
    InferenceStatus,
    Session,
    SessionClosedError,
    SessionError,
    SessionNotFoundError,
)
from geppetto_temporal.contract import CloseRequest
from geppetto_temporal.workflows import SessionPhase, SessionSummary
from tests.conftest import TASK_QUEUE

SLOW_ECHO = {
    "rules": [{"reply": {"text": "echo {last_user}", "chunk_size": 2, "chunk_delay": 0.03}}]
}


async def test_close_runs_queued_prompts_then_rejects_new_ones(new_session: Any) -> None:
    session, _ = await new_session(SLOW_ECHO)
    first = await session.start_inference("one")
    await session.submit_prompt("two")
    summary = await session.close()
    assert summary.turn_count == 2
    turns = await session.turns()
    assert [t.last_text for t in turns] == ["echo one", "echo two"]
    assert all(t.metadata.status == InferenceStatus.COMPLETED for t in turns)
    assert (await first.wait()).last_text == "echo one"
    assert (await session.status()).phase == SessionPhase.CLOSED
    with pytest.raises(SessionClosedError):
        await session.start_inference("three")
    with pytest.raises(SessionClosedError):
        await session.submit_prompt("four")


async def test_close_with_cancel_records_unrun_prompts(new_session: Any) -> None:
    session, _ = await new_session(SLOW_ECHO)
    await session.start_inference("a long one " * 5)
    await session.submit_prompt("queued")
    await asyncio.sleep(0.3)
    summary = await session.close(cancel_active=True)
    assert summary.turn_count == 2
    turns = await session.turns()
    assert [t.metadata.status for t in turns] == [
        InferenceStatus.CANCELLED,
        InferenceStatus.CANCELLED,
    ]
    # Nothing accepted is dropped silently: the queued prompt is kept, with the reason.
    assert turns[1].prompt == "queued"
    assert "closed before this prompt ran" in (turns[1].metadata.error or "")


async def test_prompt_submitted_while_closing_is_kept_not_run(new_session: Any) -> None:
    session, _ = await new_session(SLOW_ECHO)
    await session.start_inference("still running " * 3)
    closing = await session.workflow_handle.start_update(
        "close",
        CloseRequest(),
        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
        result_type=SessionSummary,
    )
    await session.submit_prompt("too late")
    summary = await closing.result()
    turns = await session.turns()
    assert summary.turn_count == 2
    assert turns[0].metadata.status == InferenceStatus.COMPLETED
    assert turns[1].prompt == "too late"
    assert turns[1].metadata.status == InferenceStatus.CANCELLED
    assert "closed before this prompt arrived" in (turns[1].metadata.error or "")


async def test_engine_switch_between_prompts(new_session: Any, model_server: Any) -> None:
    session, base_url = await new_session({"rules": [{"reply": {"text": "model {last_user}"}}]})
    await (await session.start_inference("first")).wait()
    other = EngineBuilder("openai:other-model").base_url(base_url)
    second = await (await session.start_inference("second", engine=other)).wait()
    third = await (await session.start_inference("third")).wait()
    assert second.metadata.model == "other-model"
    assert third.metadata.model == "other-model"  # the switch sticks
    assert (await session.engine()).model == "other-model"
    models = [r.body["model"] for r in model_server.requests(base_url)]
    assert models == ["scripted", "other-model", "other-model"]
    # The conversation carried over: the third request saw all earlier messages.
    assert len(model_server.requests(base_url)[-1].body["messages"]) == 5


async def test_create_with_existing_id(client: Client, worker: Any) -> None:
    engine = EngineBuilder("openai:scripted").base_url("http://127.0.0.1:9/v1")
    session = await Session.create(
        client, engine, session_id="dup-session-1", task_queue=TASK_QUEUE
    )
    with pytest.raises(SessionError, match="already exists"):
        await Session.create(client, engine, session_id="dup-session-1", task_queue=TASK_QUEUE)
    same = await Session.create(
        client, engine, session_id="dup-session-1", task_queue=TASK_QUEUE, reuse_existing=True
    )
    assert same.session_id == session.session_id
    await session.close()
    with pytest.raises(SessionClosedError):
        await Session.create(
            client, engine, session_id="dup-session-1", task_queue=TASK_QUEUE, reuse_existing=True
        )


async def test_unknown_session_is_reported(client: Client, worker: Any) -> None:
    ghost = Session.attach(client, "no-such-session-42")
    with pytest.raises(SessionNotFoundError):
        await ghost.start_inference("hello?")
    with pytest.raises(SessionNotFoundError):
        await ghost.status()
