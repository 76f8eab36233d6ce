"""The tool loop: parallel calls, call order, limits, error handling, timeouts, bad calls."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType

from geppetto_temporal import (
    BlockKind,
    EngineBuilder,
    InferenceFailed,
    InferenceStatus,
    MaxIterationsReached,
)
from geppetto_temporal.activities import _activities
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import Block, PayloadKey
from tests import toolbox
from tests.scripts import FAILING, LOOPING, WEATHER_AND_MATH, calls_then_answer
from tests.waiting import eventually


def tool_results(blocks: list[Block]) -> list[dict[str, Any]]:
    return [b.payload for b in blocks if b.kind == BlockKind.TOOL_USE]


def tool_messages(server: ScriptedModelServer, base_url: str) -> list[str]:
    """The tool message contents the model received, over all requests of a script."""
    contents: list[str] = []
    for request in server.requests(base_url):
        for message in request.body.get("messages", []):
            if message.get("role") == "tool":
                contents.append(message["content"])
    return contents


async def test_parallel_tool_calls_keep_call_order(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(WEATHER_AND_MATH)
    turn = await (await session.start_inference("weather in Paris and Berlin, and 6*7?")).wait()
    kinds = [b.kind for b in turn.blocks]
    assert kinds == [
        BlockKind.USER,
        BlockKind.LLM_TEXT,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_USE,
        BlockKind.TOOL_USE,
        BlockKind.TOOL_USE,
        BlockKind.LLM_TEXT,
    ]
    calls = [b for b in turn.blocks if b.kind == BlockKind.TOOL_CALL]
    results = [b for b in turn.blocks if b.kind == BlockKind.TOOL_USE]
    # Results pair with calls by id, in call order.
    assert [r.call_id for r in results] == [c.call_id for c in calls]
    assert results[0].payload[PayloadKey.RESULT]["city"] == "Paris"
    assert results[1].payload[PayloadKey.RESULT] == {"expression": "6 * 7", "result": 42}
    assert results[2].payload[PayloadKey.RESULT]["city"] == "Berlin"
    # The model saw the three results, in order, in its second request.
    seen = tool_messages(model_server, base_url)
    assert [json.loads(c).get("city", json.loads(c).get("result")) for c in seen] == [
        "Paris",
        42,
        "Berlin",
    ]
    assert turn.last_text.startswith("Done: ")


async def test_max_parallel_tools_one_still_runs_all(new_session: Any) -> None:
    session, _ = await new_session(WEATHER_AND_MATH, configure=lambda b: b.max_parallel_tools(1))
    turn = await (await session.start_inference("go")).wait()
    assert len(tool_results(turn.blocks)) == 3


@pytest.mark.parametrize("limit", [2, 3])
async def test_max_parallel_tools_is_how_many_tool_activities_run_at_once(
    new_session: Any, limit: int
) -> None:
    # Six calls of a tool activity that counts how many of its calls run at the same time.
    group = f"parallel-{limit}-{uuid.uuid4().hex[:8]}"
    probe = {"name": "concurrency_probe", "arguments": {"group": group, "rendezvous": limit}}
    session, _ = await new_session(
        calls_then_answer(*[probe] * 6, answer="Peaks: {tool_results}"),
        configure=lambda b: b.max_parallel_tools(limit),
    )
    handle = await session.start_inference("six probes")
    turn = await handle.wait()
    results = tool_results(turn.blocks)
    assert len(results) == 6
    assert all(r.get(PayloadKey.ERROR) is None for r in results), results
    assert toolbox.PEAK[group] == limit
    assert toolbox.RUNNING[group] == 0
    # They ran as (remote) activities, each its own.
    events = (await handle.workflow_handle.fetch_history()).events
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled.count("geppetto.tool_call") == 6


async def test_max_iterations_keeps_partial_turn(new_session: Any) -> None:
    session, _ = await new_session(LOOPING, configure=lambda b: b.max_iterations(3))
    handle = await session.start_inference("loop forever")
    with pytest.raises(MaxIterationsReached) as info:
        await handle.wait()
    turn = info.value.turn
    assert turn is not None
    assert turn.metadata.status == InferenceStatus.MAX_ITERATIONS
    assert len([b for b in turn.blocks if b.kind == BlockKind.TOOL_CALL]) == 3
    assert len(tool_results(turn.blocks)) == 3
    # The session kept the partial turn and takes the next prompt.
    stored = (await session.turns())[-1]
    assert stored.metadata.status == InferenceStatus.MAX_ITERATIONS
    assert len(stored.blocks) == len(turn.blocks)


async def test_error_handling_continue_hands_error_to_model(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(FAILING)
    turn = await (await session.start_inference("try it")).wait()
    [result] = tool_results(turn.blocks)
    assert result[PayloadKey.ERROR] == "RuntimeError: tool exploded: boom"
    assert json.loads(tool_messages(model_server, base_url)[0]) == {
        "error": "RuntimeError: tool exploded: boom"
    }
    assert "tool exploded" in turn.last_text


async def test_error_handling_abort_ends_the_loop(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(
        FAILING, configure=lambda b: b.tool_error_handling("abort")
    )
    handle = await session.start_inference("try it")
    with pytest.raises(InferenceFailed) as info:
        await handle.wait()
    assert "abort" in str(info.value) and "tool exploded" in str(info.value)
    assert info.value.turn is not None
    assert info.value.turn.blocks[-1].kind == BlockKind.TOOL_USE
    # Aborting means the model was never called again.
    assert len(model_server.requests(base_url)) == 1
    # The session is idle and usable.
    assert not await session.is_running()


FLAKY = calls_then_answer(
    {"name": "flaky_tool", "arguments": {"succeed_on_attempt": 3}}, answer="Result: {tool_results}"
)


async def test_error_handling_retry_retries_the_tool_activity(
    new_session: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from geppetto_temporal.retry import RetrySpec

    caplog.set_level(logging.WARNING, logger="geppetto_temporal.worker")
    session, _ = await new_session(
        FLAKY,
        configure=lambda b: b.tool_error_handling("retry").tool_retry(
            RetrySpec(maximum_attempts=5, initial_interval_seconds=0.05, backoff_coefficient=1.0)
        ),
    )
    handle = await session.start_inference("flaky, retried until it works")
    turn = await handle.wait()
    [result] = tool_results(turn.blocks)
    assert result[PayloadKey.RESULT] == {"attempt": 3}
    call_id = result[PayloadKey.ID]
    assert toolbox.ATTEMPTS[call_id] == 3
    # The worker says each retry as it starts: the tool, the attempt, why the last one failed.
    prefix = f"retrying tool flaky_tool of {handle.inference_id}: attempt "

    async def retries() -> list[str]:
        said = (r.getMessage() for r in caplog.records if r.name == "geppetto_temporal.worker")
        return sorted(m for m in said if m.startswith(prefix))

    lines = await eventually(retries, lambda found: len(found) == 2, what="two retry lines")
    for attempt, line in zip((2, 3), lines, strict=True):
        assert line.startswith(f"{prefix}{attempt} (attempt {attempt - 1}: "), line
        assert "transient failure" in line, line


async def test_local_tools_run_in_the_workflow_task(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    # The example tools are `local=True`: one step's three calls and the next LLM call are
    # scheduled from one workflow task, and the calls leave markers, not activity events.
    session, base_url = await new_session(WEATHER_AND_MATH)
    handle = await session.start_inference("weather and math, locally")
    turn = await handle.wait()
    assert turn.last_text.startswith("Done: ")
    assert len(tool_messages(model_server, base_url)) == 3
    events = (await handle.workflow_handle.fetch_history()).events
    activities = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert activities == ["geppetto.llm_step", "geppetto.llm_step"]
    markers = [
        e.marker_recorded_event_attributes.marker_name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    assert markers == ["core_local_activity"] * 3
    tasks = [e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
    assert len(tasks) == 3


async def test_error_handling_retry_retries_a_local_tool(new_session: Any) -> None:
    from geppetto_temporal.retry import RetrySpec

    script = json.loads(json.dumps(FLAKY).replace("flaky_tool", "flaky_local_tool"))
    session, _ = await new_session(
        script,
        configure=lambda b: b.tool_error_handling("retry").tool_retry(
            RetrySpec(maximum_attempts=5, initial_interval_seconds=0.05, backoff_coefficient=1.0)
        ),
    )
    turn = await (await session.start_inference("flaky and local, retried")).wait()
    [result] = tool_results(turn.blocks)
    assert result[PayloadKey.RESULT] == {"attempt": 3}
    assert toolbox.ATTEMPTS[result[PayloadKey.ID]] == 3


async def test_error_handling_retry_gives_final_error_to_model(new_session: Any) -> None:
    from geppetto_temporal.retry import RetrySpec

    session, _ = await new_session(
        FLAKY,
        configure=lambda b: b.tool_error_handling("retry").tool_retry(
            RetrySpec(maximum_attempts=2, initial_interval_seconds=0.05)
        ),
    )
    turn = await (await session.start_inference("flaky, retried twice")).wait()
    [result] = tool_results(turn.blocks)
    assert "transient failure on attempt 2" in result[PayloadKey.ERROR]
    assert turn.metadata.status == InferenceStatus.COMPLETED


async def test_continue_mode_does_not_retry_tool_exceptions(new_session: Any) -> None:
    session, _ = await new_session(FLAKY)
    turn = await (await session.start_inference("flaky, not retried")).wait()
    [result] = tool_results(turn.blocks)
    assert "transient failure on attempt 1" in result[PayloadKey.ERROR]
    assert toolbox.ATTEMPTS[result[PayloadKey.ID]] == 1


SLEEPY = calls_then_answer(
    {"name": "sleepy_tool", "arguments": {"seconds": 30}}, answer="After: {tool_results}"
)


async def test_tool_timeout_is_enforced(new_session: Any) -> None:
    session, _ = await new_session(SLEEPY)
    turn = await (await session.start_inference("sleep")).wait()
    [result] = tool_results(turn.blocks)
    assert result[PayloadKey.ERROR] == "tool sleepy_tool timed out after 0.5s"
    assert "timed out" in turn.last_text


BAD_CALLS = calls_then_answer(
    {"name": "launch_rockets", "arguments": {"count": 3}},
    {"name": "calculate", "raw_arguments": '{"expression": "1 +'},
    {"name": "get_weather", "arguments": {"town": "Paris"}},
    answer="I see: {tool_results}",
)


async def test_unknown_tool_and_malformed_arguments_reach_the_model(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(BAD_CALLS)
    turn = await (await session.start_inference("do bad things")).wait()
    errors = [r[PayloadKey.ERROR] for r in tool_results(turn.blocks)]
    assert errors[0].startswith("unknown tool 'launch_rockets'")
    assert errors[1].startswith("arguments for calculate are not valid JSON")
    assert "invalid arguments for get_weather" in errors[2] and "city" in errors[2]
    # The malformed call is kept verbatim so the model sees what it sent.
    bad_call = [b for b in turn.blocks if b.kind == BlockKind.TOOL_CALL][1]
    assert bad_call.payload[PayloadKey.ARGS] == '{"expression": "1 +'
    seen = [json.loads(c)["error"] for c in tool_messages(model_server, base_url)]
    assert seen == errors
    assert turn.metadata.status == InferenceStatus.COMPLETED


async def test_allowed_tools_limits_what_the_model_sees(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    script = {
        "rules": [
            {
                "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
                "when": {"last_role": "user"},
            },
            {"when": {"last_role": "tool"}, "reply": {"text": "{tool_results}"}},
        ]
    }
    session, base_url = await new_session(script, configure=lambda b: b.tools("calculate"))
    turn = await (await session.start_inference("weather?")).wait()
    first_request = model_server.requests(base_url)[0].body
    assert [t["function"]["name"] for t in first_request["tools"]] == ["calculate"]
    [result] = tool_results(turn.blocks)
    assert result[PayloadKey.ERROR].startswith("unknown tool 'get_weather'")


async def test_system_prompt_middleware_reaches_the_model(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    script = {"rules": [{"reply": {"text": "ok"}}]}
    session, base_url = await new_session(script, configure=lambda b: b.system_prompt("Be terse."))
    turn = await (await session.start_inference("hi")).wait()
    messages = model_server.requests(base_url)[0].body["messages"]
    assert messages[0] == {"role": "system", "content": "Be terse."}
    # The stored turn is not rewritten by middleware.
    assert [b.kind for b in turn.blocks] == [BlockKind.USER, BlockKind.LLM_TEXT]


def test_engine_builder_validates_eagerly() -> None:
    from geppetto_temporal import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown provider"):
        EngineBuilder("gemini:pro")
    with pytest.raises(ValueError):
        EngineBuilder("openai:gpt-4o").max_parallel_tools(0)
    spec = EngineBuilder("openai:gpt-4o").tools("a", "b").max_iterations(7).build()
    assert spec.tools.allowed_tools == ("a", "b") and spec.max_iterations == 7


def llm_step_inputs(history: Any) -> list[dict[str, Any]]:
    return [
        json.loads(e.activity_task_scheduled_event_attributes.input.payloads[0].data)
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "geppetto.llm_step"
    ]


@pytest.mark.parametrize("cached", [True, False], ids=["cache-hit", "cache-miss"])
async def test_later_steps_reference_the_blocks_of_earlier_ones(
    new_session: Any,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
    cached: bool,
) -> None:
    if not cached:
        # As if another worker ran step 1: step 2 reads them from the inference (a query).
        monkeypatch.setattr(_activities, "_OWN_BLOCKS_CACHE_SIZE", 0)
    session, base_url = await new_session(WEATHER_AND_MATH)
    handle = await session.start_inference(f"weather and math ({cached=})")
    turn = await handle.wait()
    step_1, step_2 = llm_step_inputs(await handle.workflow_handle.fetch_history())
    assert [b["kind"] for b in step_1["blocks"]] == ["user"] and "known" not in step_1
    # Step 2 gets only the three tool results; the prompt, the reply and the three calls
    # (5 blocks) are referenced.
    assert [b["kind"] for b in step_2["blocks"]] == ["tool_use"] * 3
    assert step_2["known"] == 5
    assert step_2["known_last_id"] == turn.blocks[4].id
    # Either way the model saw the whole conversation.
    messages = model_server.requests(base_url)[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "tool"]
    assert turn.last_text.startswith("Done: ")
