"""Provider faults are retried or fail fast; cancellation keeps partial output; no key leaks."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from geppetto_temporal import (
    BlockKind,
    EngineBuilder,
    InferenceCancelled,
    InferenceFailed,
    InferenceStatus,
    Session,
    create_worker,
)
from geppetto_temporal.events import PartialEvent
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import BlockMetaKey, PayloadKey
from tests import toolbox
from tests.conftest import SECRET_API_KEY, scripted_endpoints
from tests.scripts import SLOW_STORY, STORY, faulty
from tests.watch import EventWatch, assert_no_delta_after_interrupt, until
from tests.workers import unique_queue


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429, "retry_after": 0.2},
        {"status": 500},
        {"status": 503},
        {"cut_after_chunks": 1},
    ],
    ids=["429-retry-after", "500", "503", "cut-stream"],
)
async def test_transient_fault_then_success_gives_one_final_turn(
    new_session: Any, model_server: ScriptedModelServer, fault: dict[str, Any]
) -> None:
    session, base_url = await new_session(faulty(fault))
    turn = await (await session.start_inference(f"try {fault}")).wait()
    assert turn.last_text == "finally an answer"
    texts = [b for b in turn.blocks if b.kind == BlockKind.LLM_TEXT]
    assert len(texts) == 1  # nothing from the failed attempt leaks into the turn
    assert texts[0].metadata[BlockMetaKey.ATTEMPT] == 2
    requests = model_server.requests(base_url)
    assert len(requests) == 2 and requests[0].fault is not None and requests[1].fault is None
    assert len(await session.turns()) == 1


async def test_retry_after_is_honoured(new_session: Any, model_server: ScriptedModelServer) -> None:
    session, base_url = await new_session(faulty({"status": 429, "retry_after": 1.5}))
    await (await session.start_inference("rate limited")).wait()
    first, second = model_server.requests(base_url)
    assert second.received_at - first.received_at >= 1.4


async def test_unauthorized_fails_fast_with_clear_error(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    script = {
        "rules": [{"reply": {"error": {"status": 401, "message": "Incorrect API key provided"}}}]
    }
    session, base_url = await new_session(script)
    handle = await session.start_inference("hello")
    with pytest.raises(InferenceFailed) as info:
        await handle.wait()
    message = str(info.value)
    assert "HTTP 401" in message and "OPENAI_API_KEY" in message and "openai:scripted" in message
    # No retry: the inference has ended after one request.
    assert len(model_server.requests(base_url)) == 1
    assert info.value.turn is not None and info.value.turn.metadata.status == InferenceStatus.FAILED
    # The failed turn is kept and the session takes the next prompt.
    turns = await session.turns()
    assert turns[-1].metadata.status == InferenceStatus.FAILED
    assert not await session.is_running()


async def test_cancel_during_stream_keeps_partial_text(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(SLOW_STORY)
    handle = await session.start_inference("tell me a story")
    watch = EventWatch(handle)
    await watch.first(PartialEvent)  # the reply is streaming
    await handle.cancel()
    await handle.cancel()  # idempotent
    with pytest.raises(InferenceCancelled) as info:
        await handle.wait()
    turn = info.value.turn
    assert turn is not None and turn.metadata.status == InferenceStatus.CANCELLED
    [partial] = [b for b in turn.blocks if b.kind == BlockKind.LLM_TEXT]
    assert partial.metadata[BlockMetaKey.INTERRUPTED] is True
    assert partial.text.startswith("Once upon a time")
    assert 0 < len(partial.text) < len(STORY)
    # Providers bill what they streamed: with no usage reported before the cut, the
    # worker estimates it (4 characters a token) and says so; the session counts it.
    usage = turn.metadata.usage
    assert usage is not None and usage.estimated
    assert usage.output_tokens == math.ceil(len(partial.text) / 4)
    assert usage.input_tokens > 0
    assert (await session.status()).usage == usage
    # Every delta came before the interrupt, which carries the kept text.
    interrupt = assert_no_delta_after_interrupt(await watch.finished())
    assert interrupt.text == partial.text
    # The HTTP stream really stopped: the server saw the client go away.
    await until(lambda: model_server.requests(base_url)[0].outcome != "pending", "the request end")
    assert model_server.requests(base_url)[0].outcome == "client_disconnected"
    # Cancel after completion is a no-op, and the session goes on.
    await handle.cancel()
    await session.cancel_active()
    nxt = await (await session.start_inference("and now?")).wait()
    assert nxt.last_text == "Sure: and now?"
    turns = await session.turns()
    assert [t.metadata.status for t in turns] == [
        InferenceStatus.CANCELLED,
        InferenceStatus.COMPLETED,
    ]
    # The next request carried the interrupted text as context.
    last_request = model_server.requests(base_url)[-1].body["messages"]
    assert last_request[1]["role"] == "assistant" and last_request[1]["content"] == partial.text


def slow_tool_script(key: str) -> dict[str, Any]:
    """A slow tool (that marks `key` when it starts and when it sees a cancel) and a quick one."""
    return {
        "rules": [
            {
                "name": "call",
                "when": {"last_user_contains": "slow"},
                "reply": {
                    "tool_calls": [
                        {"name": "blocking_tool", "arguments": {"key": key, "seconds": 30}},
                        {"name": "calculate", "arguments": {"expression": "2 + 2"}},
                    ]
                },
            },
            {"name": "other", "reply": {"text": "Fine: {last_user}"}},
        ]
    }


async def test_cancel_during_tool_via_session(new_session: Any) -> None:
    key = uuid.uuid4().hex
    session, _ = await new_session(slow_tool_script(key))
    handle = await session.start_inference("run the slow tool")
    await until(lambda: key in toolbox.STARTED, "the slow tool to start")
    assert await session.is_running()
    await session.cancel_active()
    with pytest.raises(InferenceCancelled) as info:
        await handle.wait()
    # The tool activity itself stopped (it hears at its next heartbeat), not just the loop.
    await until(lambda: key in toolbox.CANCELLED, "the slow tool to see the cancel")
    turn = info.value.turn
    assert turn is not None
    results = {b.call_id: b.payload for b in turn.blocks if b.kind == BlockKind.TOOL_USE}
    calls = [b for b in turn.blocks if b.kind == BlockKind.TOOL_CALL]
    # Every call has a result, so the conversation stays valid for the provider.
    assert len(results) == 2
    slow, fast = calls
    assert results[slow.call_id][PayloadKey.ERROR] is not None
    assert results[fast.call_id][PayloadKey.RESULT] == {"expression": "2 + 2", "result": 4}
    nxt = await (await session.start_inference("next one")).wait()
    assert nxt.last_text == "Fine: next one"


async def test_cancel_before_anything_ran_and_when_idle(
    client: Client, model_server: ScriptedModelServer, api_key_env: str
) -> None:
    base_url = model_server.add_script(SLOW_STORY)
    queue = unique_queue("cancel-early")
    # This worker runs workflows but no activity: the inference's first LLM step stays
    # scheduled, so the cancel certainly comes before anything ran.
    async with create_worker(client, task_queue=queue, no_remote_activities=True):
        session = await Session.create(
            client,
            EngineBuilder("openai:scripted").base_url(base_url),
            session_id=f"test-{uuid.uuid4().hex[:10]}",
            task_queue=queue,
        )
        await session.cancel_active()  # idle: no-op
        assert not await session.is_running()
        handle = await session.start_inference("a story please")
        await handle.cancel()
        with pytest.raises(InferenceCancelled) as info:
            await handle.wait()
        turn = info.value.turn
        assert turn is not None and turn.metadata.status == InferenceStatus.CANCELLED
        assert [b.kind for b in turn.blocks] == [BlockKind.USER]  # nothing was produced
        assert not await session.is_running()
        # Nothing ran: the model was never called, and the step was cancelled unstarted.
        assert model_server.requests(base_url) == []
        types = [e.event_type for e in (await handle.workflow_handle.fetch_history()).events]
        assert types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1
        assert EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED not in types
        assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED in types
    # Once a worker takes activities, the session answers the next prompt, and the cancelled
    # step is never run after all.
    async with create_worker(
        client, task_queue=queue, endpoints=scripted_endpoints(model_server.url)
    ):
        nxt = await (await session.start_inference("and now?")).wait()
    assert nxt.last_text == "Sure: and now?"
    assert len(model_server.requests(base_url)) == 1


async def test_no_history_contains_the_api_key(
    client: Client, new_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(
        {
            "rules": [
                {
                    "when": {"last_role": "user"},
                    "reply": {
                        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]
                    },
                },
                {"reply": {"text": "{tool_results}"}},
            ]
        }
    )
    await (await session.start_inference("weather in Rome")).wait()
    # The key was really used on the wire: this server answers 401 without it ...
    first = model_server.requests(base_url)[0]
    assert first.status == 200 and "authorization" in first.headers
    # ... and appears in no workflow history of the namespace.
    scanned = 0
    async for execution in client.list_workflows():
        history = await client.get_workflow_handle(
            execution.id, run_id=execution.run_id
        ).fetch_history()
        text = json.dumps(history.to_json_dict())
        assert SECRET_API_KEY not in text, execution.id
        assert "S3CR3T" not in text, execution.id
        scanned += 1
    assert scanned >= 2


async def test_stalled_stream_is_retried_after_idle_timeout(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(
        faulty({"stall_after_chunks": 1}),
        configure=lambda b: b.llm_activity(stream_idle_seconds=1.0),
    )
    turn = await (await session.start_inference("stall once")).wait()
    assert turn.last_text == "finally an answer"
    assert [r.fault is not None for r in model_server.requests(base_url)] == [True, False]


async def test_final_failure_keeps_partial_text(new_session: Any) -> None:
    from geppetto_temporal.retry import RetrySpec

    long_reply = {
        "rules": [
            {
                "name": "answer",
                "reply": {"text": "partial words that never finish " * 4, "chunk_size": 8},
                "faults": [{"cut_after_chunks": 3}, {"cut_after_chunks": 3}],
            }
        ]
    }
    session, _ = await new_session(
        long_reply,
        configure=lambda b: b.llm_activity(
            retry=RetrySpec(maximum_attempts=2, initial_interval_seconds=0.05)
        ),
    )
    handle = await session.start_inference("this will break")
    with pytest.raises(InferenceFailed) as info:
        await handle.wait()
    turn = info.value.turn
    assert turn is not None
    [partial] = [b for b in turn.blocks if b.kind == BlockKind.LLM_TEXT]
    assert partial.metadata[BlockMetaKey.INTERRUPTED] is True
    assert partial.metadata["failed"] is True
    assert partial.text.startswith("partial words")
    assert (await session.turns())[-1].blocks[-1].text == partial.text
