"""A session's basic life: prompts, turns, busy rejection, queueing, re-attaching."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError

from geppetto_temporal import (
    BlockKind,
    EngineBuilder,
    ExecutionHandle,
    InferenceCancelled,
    InferenceStatus,
    InvalidPromptError,
    Session,
    SessionBusyError,
    SessionClosedError,
    SessionError,
    connect,
    search,
)
from geppetto_temporal.activities import _activities
from geppetto_temporal.activities._activities import InferenceActivities
from geppetto_temporal.contract import SessionInput, TurnLookup
from geppetto_temporal.events import PartialEvent
from tests.conftest import TASK_QUEUE
from tests.watch import EventWatch, assert_no_delta_after_interrupt

ECHO: dict[str, Any] = {"rules": [{"name": "echo", "reply": {"text": "You said: {last_user}"}}]}


async def test_prompt_returns_turn_with_metadata(new_session: Any) -> None:
    session, _ = await new_session(ECHO)
    handle = await session.start_inference("hello there")
    turn = await handle.wait()
    assert turn.last_text == "You said: hello there"
    assert [b.kind for b in turn.blocks] == [BlockKind.USER, BlockKind.LLM_TEXT]
    assert turn.metadata.session_id == session.session_id
    assert turn.metadata.inference_id == handle.inference_id
    assert turn.metadata.status == InferenceStatus.COMPLETED
    assert turn.metadata.usage is not None and turn.metadata.usage.output_tokens > 0
    assert turn.metadata.stop_reason == "stop"
    assert handle.inference_id == f"{session.session_id}/inference/1"


async def test_second_start_while_busy_is_rejected(new_session: Any) -> None:
    slow = {"rules": [{"reply": {"text": "x" * 60, "chunk_size": 2, "chunk_delay": 0.05}}]}
    session, _ = await new_session(slow)
    first = await session.start_inference("one")
    with pytest.raises(SessionBusyError) as info:
        await session.start_inference("two")
    assert info.value.active_inference_id == first.inference_id
    assert await session.is_running()
    await first.wait()
    # The session is usable right after wait() returns.
    second = await session.start_inference("three")
    await second.wait()
    turns = await session.turns()
    assert [t.prompt for t in turns] == ["one", "three"]


async def test_empty_prompt_is_rejected_and_session_stays_usable(new_session: Any) -> None:
    session, _ = await new_session(ECHO)
    with pytest.raises(InvalidPromptError):
        await session.start_inference("   ")
    turn = await (await session.start_inference("still here?")).wait()
    assert turn.last_text == "You said: still here?"


async def test_submitted_prompts_queue_behind_the_active_one(new_session: Any) -> None:
    slow = {
        "rules": [{"reply": {"text": "reply to {last_user}", "chunk_size": 1, "chunk_delay": 0.02}}]
    }
    session, _ = await new_session(slow)
    first = await session.start_inference("first")
    await session.submit_prompt("second", idempotency_key="k2")
    await session.submit_prompt("second", idempotency_key="k2")  # duplicate: ignored
    await session.submit_prompt("third", idempotency_key="k3")
    await first.wait()
    for _ in range(200):
        status = await session.status()
        if (
            status.turn_count == 3
            and status.active_inference_id is None
            and not status.queued_prompts
        ):
            break
        await asyncio.sleep(0.1)
    turns = await session.turns()
    assert [t.prompt for t in turns] == ["first", "second", "third"]
    assert [t.last_text for t in turns] == ["reply to first", "reply to second", "reply to third"]
    assert all(t.metadata.status == InferenceStatus.COMPLETED for t in turns)


async def test_handle_reattaches_from_another_client(new_session: Any, temporal_env: Any) -> None:
    slow = {"rules": [{"reply": {"text": "patience", "chunk_size": 1, "chunk_delay": 0.05}}]}
    session, _ = await new_session(slow)
    handle = await session.start_inference("wait for me")
    other: Client = await connect(temporal_env.client.service_client.config.target_host)
    again = ExecutionHandle.attach(other, handle.inference_id)
    assert again.session_id == session.session_id
    assert await again.is_running()
    turn = await again.wait()
    assert turn.last_text == "patience"
    assert not await again.is_running()
    attached = Session.attach(other, session.session_id)
    assert [t.last_text for t in await attached.turns()] == ["patience"]


async def test_twenty_prompt_session_keeps_cumulative_turns(new_session: Any) -> None:
    session, _ = await new_session(ECHO)
    for i in range(20):
        turn = await (await session.start_inference(f"prompt {i}")).wait()
        assert turn.last_text == f"You said: prompt {i}"
    turns = await session.turns()
    assert len(turns) == 20
    for i, turn in enumerate(turns):
        # Turn i holds the whole conversation up to prompt i: 2 blocks per prompt.
        assert len(turn.blocks) == 2 * (i + 1)
        assert turn.prompt == f"prompt {i}"
        assert turn.blocks[-1].text == f"You said: prompt {i}"
        assert turn.metadata.inference_id == f"{session.session_id}/inference/{i + 1}"
    # Distinct turn ids, and each turn extends the previous one.
    assert len({t.id for t in turns}) == 20
    assert turns[5].blocks[:10] == turns[4].blocks


async def _lazy(
    client: Client, base_url: str, session_id: str, **kwargs: Any
) -> tuple[Session, EngineBuilder]:
    builder = EngineBuilder("openai:scripted").base_url(base_url)
    return await Session.create(
        client, builder, session_id=session_id, task_queue=TASK_QUEUE, lazy=True, **kwargs
    ), builder


async def test_lazy_session_starts_with_its_first_prompt(
    client: Client, worker: Any, model_server: Any
) -> None:
    base_url = model_server.add_script(ECHO)
    session_id = f"lazy-{uuid.uuid4().hex[:10]}"
    session, _ = await _lazy(client, base_url, session_id)
    # Nothing exists on the server until the first prompt.
    with pytest.raises(RPCError):
        await session.workflow_handle.describe()
    turn = await (await session.start_inference("first")).wait()
    assert turn.last_text == "You said: first"
    turn = await (await session.start_inference("second")).wait()
    assert [t.prompt for t in await session.turns()] == ["first", "second"]
    # The first prompt travels in the start input: the workflow's very first task
    # starts its inference, and only the second prompt is an update.
    history = (await session.workflow_handle.fetch_history()).events
    events = [e.event_type for e in history]
    assert events[:4] == [
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    ]
    first_task = events[4 : events.index(EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, 4)]
    assert EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED in first_task
    assert events.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED) == 1
    [started] = await client.data_converter.decode(
        history[0].workflow_execution_started_event_attributes.input.payloads, [SessionInput]
    )
    assert isinstance(started, SessionInput) and started.first_prompt == "first"
    # The start carries no search attributes; the first task sets them all at once.
    attributes = (await session.workflow_handle.describe()).typed_search_attributes
    assert attributes.get(search.MODEL) == "scripted"
    assert attributes.get(search.PROVIDER) == "openai"
    assert attributes.get(search.STATUS) == "idle"
    assert attributes.get(search.PROMPT_COUNT) == 2


async def test_a_first_prompt_handle_works_before_its_inference_exists(
    client: Client, worker: Any, model_server: Any
) -> None:
    # The first prompt travels in the session's start: `start_inference` returns before
    # the session has started the inference's workflow. Every use of the handle waits
    # for that start instead of failing on a workflow that does not exist yet.
    slow = {"rules": [{"reply": {"text": "x" * 40, "chunk_size": 2, "chunk_delay": 0.05}}]}
    base_url = model_server.add_script(slow)
    session, _ = await _lazy(client, base_url, f"lazy-{uuid.uuid4().hex[:10]}")
    handle = await session.start_inference("first")
    watch = EventWatch(handle)
    assert await handle.is_running()
    with pytest.raises(SessionBusyError) as info:
        await session.start_inference("second")
    assert info.value.active_inference_id == handle.inference_id
    await watch.first(PartialEvent)
    await handle.cancel()
    with pytest.raises(InferenceCancelled) as cancelled:
        await handle.wait()
    assert cancelled.value.turn is not None and cancelled.value.turn.prompt == "first"
    assert (await watch.finished())[-1].type == "inference-finished"
    # wait() returned once the session had recorded the turn.
    assert (await session.status()).active_inference_id is None
    [turn] = await session.turns()
    assert turn.metadata.status == InferenceStatus.CANCELLED


async def test_a_first_prompt_whose_session_ends_before_it_starts_raises(
    client: Client, model_server: Any
) -> None:
    # No worker on this queue: the session never runs its first task. Terminated,
    # it never starts the inference, and the handle says so instead of waiting.
    base_url = model_server.add_script(ECHO)
    builder = EngineBuilder("openai:scripted").base_url(base_url)
    session = await Session.create(
        client, builder, task_queue=f"nobody-{uuid.uuid4().hex[:8]}", lazy=True
    )
    handle = await session.start_inference("never runs")
    await session.workflow_handle.terminate("test")
    with pytest.raises(SessionClosedError, match="ended before inference"):
        await handle.wait()


async def test_lazy_session_reports_a_taken_id_on_first_prompt(
    client: Client, worker: Any, model_server: Any
) -> None:
    base_url = model_server.add_script(ECHO)
    session_id = f"lazy-{uuid.uuid4().hex[:10]}"
    first, _ = await _lazy(client, base_url, session_id)
    await (await first.start_inference("mine")).wait()

    taken, _ = await _lazy(client, base_url, session_id)
    with pytest.raises(SessionError, match="already exists"):
        await taken.start_inference("yours")
    # reuse_existing attaches instead, and the prompt runs on the open session.
    shared, _ = await _lazy(client, base_url, session_id, reuse_existing=True)
    await (await shared.start_inference("ours")).wait()
    assert [t.prompt for t in await first.turns()] == ["mine", "ours"]

    await first.close()
    closed, _ = await _lazy(client, base_url, session_id)
    with pytest.raises(SessionClosedError):
        await closed.start_inference("too late")


async def test_lazy_session_starts_on_any_other_call(
    client: Client, worker: Any, model_server: Any
) -> None:
    base_url = model_server.add_script(ECHO)
    session, _ = await _lazy(client, base_url, f"lazy-{uuid.uuid4().hex[:10]}")
    status = await session.status()
    assert status.turn_count == 0 and status.active_inference_id is None
    # Already started now: the first prompt is a plain update.
    turn = await (await session.start_inference("after status")).wait()
    assert turn.last_text == "You said: after status"


@pytest.mark.parametrize("cached", [True, False], ids=["cache-hit", "cache-miss"])
async def test_next_prompt_continues_the_cached_conversation(
    new_session: Any,
    model_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    cached: bool,
) -> None:
    # The worker that ran an inference knows all its blocks, so the next prompt's LLM
    # step needs no `blocks` query to the session; without that cache it reads them.
    reads: list[tuple[str, int, int]] = []
    original = InferenceActivities._read_blocks

    async def counting(self: InferenceActivities, workflow_id: str, start: int, end: int) -> Any:
        reads.append((workflow_id, start, end))
        return await original(self, workflow_id, start, end)

    monkeypatch.setattr(InferenceActivities, "_read_blocks", counting)
    if not cached:
        monkeypatch.setattr(_activities, "_OWN_BLOCKS_CACHE_SIZE", 0)
    session, base_url = await new_session(ECHO)
    for prompt in ("one", "two", "three"):
        await (await session.start_inference(f"{prompt} ({cached=})")).wait()
    messages = model_server.requests(base_url)[-1].body["messages"]
    assert [m["content"] for m in messages] == [
        f"one ({cached=})",
        f"You said: one ({cached=})",
        f"two ({cached=})",
        f"You said: two ({cached=})",
        f"three ({cached=})",
    ]
    session_reads = [r for r in reads if r[0] == session.session_id]
    if cached:
        assert session_reads == []
    else:
        assert session_reads == [(session.session_id, 0, 2), (session.session_id, 1, 4)]


async def test_wait_returns_exactly_the_turn_the_session_records(
    new_session: Any, client: Client
) -> None:
    # wait() builds the turn on the client (the inference's input and result, plus the
    # Session's copy of the conversation) instead of reading it back from the session:
    # it must be the very turn the session records, through prompts queued by signal,
    # a cancelled inference, and a handle attached without its Session.
    tools = {
        "rules": [
            {
                "when": {"last_user_contains": "weather", "last_role": "user"},
                "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
            },
            {"when": {"last_role": "tool"}, "reply": {"text": "Oslo: {tool_results}"}},
            {"reply": {"text": "You said: {last_user}", "chunk_size": 4, "chunk_delay": 0.02}},
        ]
    }
    session, _ = await new_session(tools)
    turns = [await (await session.start_inference("hello")).wait()]
    turns.append(await (await session.start_inference("weather please")).wait())
    await session.submit_prompt("queued by signal")
    for _ in range(200):  # the queued prompt runs at once; wait for its turn
        status = await session.status()
        if status.turn_count == 3 and status.active_inference_id is None:
            break
        await asyncio.sleep(0.05)
    # Long enough (about 1.8 s) to outlast a cancel's way to the activity: it hears of
    # it in a heartbeat's answer, at most one a second.
    handle = await session.start_inference("long answer " * 30)
    watch = EventWatch(handle)
    await watch.first(PartialEvent)  # cancelled while it streams
    await handle.cancel()
    with pytest.raises(InferenceCancelled) as cancelled:
        await handle.wait()
    assert_no_delta_after_interrupt(await watch.finished())
    assert cancelled.value.turn is not None
    turns.append(cancelled.value.turn)
    handle = await session.start_inference("after all that")
    # A handle attached without its Session reads the conversation from the session.
    elsewhere = ExecutionHandle.attach(client, handle.inference_id)
    turns.append(await elsewhere.wait())
    await handle.wait()

    recorded = {t.metadata.inference_id: t for t in await session.turns()}
    assert len(recorded) == 5
    # The `turn` query (for clients in other languages) answers the same turn.
    for turn in turns:
        lookup = await session.workflow_handle.query(
            "turn", turn.metadata.inference_id, result_type=TurnLookup
        )
        assert lookup.recorded and lookup.turn == turn
    assert [t.last_text for t in turns[:2]] == ["You said: hello", f"Oslo: {OSLO}"]
    for turn in turns:
        assert turn == recorded[turn.metadata.inference_id]


OSLO = '{"city": "Oslo", "temperature": -3, "unit": "celsius", "conditions": "cloudy"}'
