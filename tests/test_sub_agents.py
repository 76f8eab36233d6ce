"""Sub-agents: a tool call that runs another agent as a child inference (docs/sub-agents.md)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from pydantic import BaseModel
from rich.console import Console
from temporalio.client import Client

from geppetto_temporal import (
    BlockKind,
    ConfigurationError,
    EngineBuilder,
    EngineSpec,
    ExecutionHandle,
    InferenceCancelled,
    InferenceStatus,
)
from geppetto_temporal._render import StreamPrinter
from geppetto_temporal.chat import ReplyPrinter
from geppetto_temporal.contract import InferenceResult
from geppetto_temporal.events import AgentFinishedEvent, AgentStartedEvent, FinalEvent
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import PayloadKey, Usage
from tests.waiting import eventually
from tests.watch import EventWatch, until


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion}


#: The coordinator (model `scripted`) asks `researcher` and `writer` at once, then sums up;
#: each sub-agent answers its prompt. Fixed usage, so the totals are exact.
TEAM = {
    "rules": [
        {
            "name": "delegate",
            "when": {"model": "scripted", "last_role": "user"},
            "reply": {
                "tool_calls": [
                    {"name": "researcher", "arguments": {"prompt": "facts about otters"}},
                    {"name": "writer", "arguments": {"prompt": "a line about otters"}},
                ],
                "usage": _usage(100, 10),
            },
        },
        {
            "name": "sum-up",
            "when": {"model": "scripted", "last_role": "tool"},
            "reply": {"text": "Both: {tool_results}", "usage": _usage(200, 20)},
        },
        {
            "name": "research",
            "when": {"model": "researcher"},
            "reply": {"text": "research on {last_user}", "usage": _usage(30, 3)},
        },
        {
            "name": "write",
            "when": {"model": "writer"},
            "reply": {"text": "draft of {last_user}", "usage": _usage(40, 4)},
        },
        {
            "name": "slow",
            "when": {"model": "slow"},
            "reply": {"text": "too late", "delay": 120},
        },
        {
            "name": "middle-calls-leaf",
            "when": {"model": "middle", "last_role": "user"},
            "reply": {"tool_calls": [{"name": "leaf", "arguments": {"prompt": "go deeper"}}]},
        },
        {
            "name": "middle-answers",
            "when": {"model": "middle", "last_role": "tool"},
            "reply": {"text": "middle saw: {tool_results}"},
        },
        {"name": "leaf", "when": {"model": "leaf"}, "reply": {"text": "leaf answer"}},
    ]
}


def _agent(builder: EngineBuilder, model: str) -> EngineBuilder:
    """A sub-agent engine on the same scripted server as the coordinator."""
    return EngineBuilder(f"openai:{model}").base_url(builder.build().base_url)


def _team(researcher: str = "researcher", writer: str = "writer") -> Any:
    def configure(b: EngineBuilder) -> EngineBuilder:
        return b.agent_tool("researcher", "Finds facts.", _agent(b, researcher)).agent_tool(
            "writer", "Writes prose.", _agent(b, writer)
        )

    return configure


async def _child_result(client: Client, inference_id: str) -> InferenceResult:
    handle = client.get_workflow_handle(inference_id, result_type=InferenceResult)
    result: InferenceResult = await handle.result()
    return result


async def test_coordinator_runs_two_sub_agents_in_parallel(
    new_session: Any, client: Client
) -> None:
    session, _ = await new_session(TEAM, configure=_team())
    handle = await session.start_inference("otters")
    watch = EventWatch(handle)
    turn = await handle.wait()
    # Both answers, in call order, are the tool results the coordinator summed up.
    assert turn.last_text == "Both: research on facts about otters; draft of a line about otters"
    calls = [b for b in turn.blocks if b.kind == BlockKind.TOOL_CALL]
    results = [b for b in turn.blocks if b.kind == BlockKind.TOOL_USE]
    assert [r.call_id for r in results] == [c.call_id for c in calls]
    assert [r.payload[PayloadKey.RESULT] for r in results] == [
        "research on facts about otters",
        "draft of a line about otters",
    ]
    # The parent's stream shows both children start (in one workflow task, so both before
    # either finished) and finish, with the inference ids a UI opens them by.
    events = await watch.finished()
    agent_events = [e for e in events if isinstance(e, AgentStartedEvent | AgentFinishedEvent)]
    assert [e.type for e in agent_events] == [
        "agent-started",
        "agent-started",
        "agent-finished",
        "agent-finished",
    ]
    started = [e for e in agent_events if isinstance(e, AgentStartedEvent)]
    assert [e.agent for e in started] == ["researcher", "writer"]
    assert [e.agent_inference_id for e in started] == [
        f"{handle.inference_id}/agent/{c.call_id}" for c in calls
    ]
    finished = {e.agent: e for e in agent_events if isinstance(e, AgentFinishedEvent)}
    assert {e.status for e in finished.values()} == {InferenceStatus.COMPLETED}
    # Each child is an inference of its own: own history, own stream, same session.
    for event in started:
        child = await _child_result(client, event.agent_inference_id)
        assert child.status == InferenceStatus.COMPLETED
        assert child.usage == finished[event.agent].usage
        child_handle = ExecutionHandle.attach(client, event.agent_inference_id)
        child_events = [e async for e in child_handle.events()]
        assert child_events[0].type == "inference-started"
        assert child_events[-1].type == "inference-finished"
        assert {e.meta.session_id for e in child_events} == {session.session_id}


async def test_the_cli_and_chat_show_sub_agents_start_and_finish(new_session: Any) -> None:
    session, _ = await new_session(TEAM, configure=_team())
    handle = await session.start_inference("otters")
    events = [e async for e in handle.events()]
    await handle.wait()
    for printer in (StreamPrinter, ReplyPrinter):
        out = io.StringIO()
        shown = printer(Console(file=out, width=300, color_system=None))
        for event in events:
            if isinstance(shown, StreamPrinter):
                shown.handle(event)
            else:
                shown.show(event)
        lines = out.getvalue().splitlines()
        started = [line.strip() for line in lines if "⇢ agent" in line]
        finished = [line.strip() for line in lines if "⇠ agent" in line]
        # Each child by name with the inference id a person opens it by, then its end.
        assert sorted(started) == sorted(
            f"⇢ agent {name} started ({handle.inference_id}/agent/{call})"
            for name, call in _agent_calls(events)
        ), printer
        assert sorted(finished) == [
            "⇠ agent researcher finished, 30 in / 3 out tokens",
            "⇠ agent writer finished, 40 in / 4 out tokens",
        ], printer


def _agent_calls(events: list[Any]) -> list[tuple[str, str]]:
    return [
        (e.agent, e.agent_inference_id.rsplit("/", 1)[1])
        for e in events
        if isinstance(e, AgentStartedEvent)
    ]


@pytest.mark.parametrize("steps_per_run", [None, 1])
async def test_usage_adds_up_exactly(
    new_session: Any, client: Client, steps_per_run: int | None
) -> None:
    team = _team()
    session, _ = await new_session(TEAM, configure=lambda b: team(b).steps_per_run(steps_per_run))
    handle = await session.start_inference("otters")
    watch = EventWatch(handle)
    turn = await handle.wait()
    events = await watch.finished()
    own = sum((e.meta.usage or Usage() for e in events if isinstance(e, FinalEvent)), Usage())
    assert own.total_tokens == 110 + 220
    children = sum(
        (e.usage or Usage() for e in events if isinstance(e, AgentFinishedEvent)), Usage()
    )
    assert children.total_tokens == 33 + 44
    assert turn.metadata.usage == own + children
    assert turn.metadata.usage is not None and turn.metadata.usage.total_tokens == 407
    # And so into the session.
    assert (await session.status()).usage.total_tokens == 407
    # With one step per run, the children's usage crossed a continue-as-new in the carry.
    runs = await client.get_workflow_handle(handle.inference_id).query("runs")
    assert len(runs) == (1 if steps_per_run == 1 else 0)


async def test_approvals_of_and_inside_a_sub_agent(new_session: Any, client: Client) -> None:
    """A sub-agent call can wait for approval; so can a tool call inside the sub-agent."""
    script = {
        "rules": [
            {
                "name": "delegate",
                "when": {"model": "scripted", "last_role": "user"},
                "reply": {"tool_calls": [{"name": "helper", "arguments": {"prompt": "do it"}}]},
            },
            {
                "name": "answer",
                "when": {"model": "scripted", "last_role": "tool"},
                "reply": {"text": "helper said: {tool_results}"},
            },
            {
                "name": "guarded",
                "when": {"model": "helper", "last_role": "user"},
                "reply": {"tool_calls": [{"name": "guarded_tool", "arguments": {"key": "sa"}}]},
            },
            {
                "name": "helper-done",
                "when": {"model": "helper", "last_role": "tool"},
                "reply": {"text": "ran {tool_results}"},
            },
        ]
    }

    def configure(b: EngineBuilder) -> EngineBuilder:
        helper = _agent(b, "helper").tools("guarded_tool")
        return b.agent_tool("helper", "Helps.", helper).require_approval("help*")

    session, _ = await new_session(script, configure=configure)
    handle = await session.start_inference("go")
    [call] = await eventually(handle.pending_approvals, bool, within=60, what="the agent call")
    assert call.tool == "helper" and call.arguments == {"prompt": "do it"}
    await handle.approve(call.call_id)
    child = ExecutionHandle.attach(client, f"{handle.inference_id}/agent/{call.call_id}")
    await eventually(child.exists, bool, within=60, what="the sub-agent to start")
    [inner] = await eventually(child.pending_approvals, bool, within=60, what="the inner call")
    assert inner.tool == "guarded_tool"
    await child.approve(inner.call_id)
    turn = await handle.wait()
    assert turn.last_text == 'helper said: ran {"done": "sa"}'


async def test_cancel_of_the_parent_cancels_its_sub_agents(
    new_session: Any, client: Client, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(TEAM, configure=_team("slow", "slow"))
    handle = await session.start_inference("otters")
    watch = EventWatch(handle)

    def started() -> list[AgentStartedEvent]:
        return [e for e in watch.events if isinstance(e, AgentStartedEvent)]

    def children_waiting() -> bool:
        slow = [r for r in model_server.requests(base_url) if r.body.get("model") == "slow"]
        return len(slow) == 2 and len(started()) == 2

    await until(children_waiting, "both sub-agents to call their model")
    await handle.cancel()
    with pytest.raises(InferenceCancelled) as info:
        await handle.wait()
    assert info.value.turn is not None
    assert info.value.turn.metadata.status == InferenceStatus.CANCELLED
    for event in started():
        child = await _child_result(client, event.agent_inference_id)
        assert child.status == InferenceStatus.CANCELLED
    # Each call still has a result (an error), so the turn stays a valid conversation.
    results = [b for b in info.value.turn.blocks if b.kind == BlockKind.TOOL_USE]
    assert len(results) == 2 and all(r.payload.get(PayloadKey.ERROR) for r in results)
    finished = [e for e in await watch.finished() if isinstance(e, AgentFinishedEvent)]
    assert sorted(e.status for e in finished) == [InferenceStatus.CANCELLED] * 2


async def test_depth_limit_gives_the_model_an_error(new_session: Any) -> None:
    def configure(b: EngineBuilder) -> EngineBuilder:
        middle = _agent(b, "middle").agent_tool("leaf", "Goes deeper.", _agent(b, "leaf"))
        return b.agent_tool("researcher", "Delegates.", middle).max_agent_depth(1)

    script = {
        "rules": [
            {
                "name": "delegate",
                "when": {"model": "scripted", "last_role": "user"},
                "reply": {"tool_calls": [{"name": "researcher", "arguments": {"prompt": "x"}}]},
            },
            {
                "name": "answer",
                "when": {"model": "scripted", "last_role": "tool"},
                "reply": {"text": "coordinator saw: {tool_results}"},
            },
            *[r for r in TEAM["rules"] if r["name"] in ("middle-calls-leaf", "middle-answers")],
        ]
    }
    session, _ = await new_session(script, configure=configure)
    turn = await (await session.start_inference("go")).wait()
    # The middle agent (depth 1) was refused its own sub-agent (depth 2) and said so.
    assert turn.last_text.startswith("coordinator saw: middle saw: ")
    assert "sub-agents may nest only 1 deep" in turn.last_text


class Finding(BaseModel):
    """What a typed sub-agent returns."""

    topic: str
    confidence: float


async def test_a_typed_sub_agent_returns_its_validated_output(new_session: Any) -> None:
    def configure(b: EngineBuilder) -> EngineBuilder:
        analyst = _agent(b, "analyst").output_type(Finding, retries=1)
        return b.agent_tool("analyst", "Returns a finding.", analyst)

    script = {
        "rules": [
            {
                "name": "delegate",
                "when": {"model": "scripted", "last_role": "user"},
                "reply": {"tool_calls": [{"name": "analyst", "arguments": {"prompt": "otters"}}]},
            },
            {
                "name": "answer",
                "when": {"model": "scripted", "last_role": "tool"},
                "reply": {"text": "finding: {tool_result_0}"},
            },
            # The analyst's first answer breaks its schema; the retry (a user block saying
            # what was wrong) gets a valid one.
            {
                "name": "good",
                "when": {"model": "analyst", "last_user_contains": "did not match"},
                "reply": {"text": '{"topic": "otters", "confidence": 0.9}'},
            },
            {
                "name": "bad",
                "when": {"model": "analyst"},
                "reply": {"text": '{"topic": "otters", "confidence": "high"}'},
            },
        ]
    }
    session, _ = await new_session(script, configure=configure)
    turn = await (await session.start_inference("go")).wait()
    [result] = [b for b in turn.blocks if b.kind == BlockKind.TOOL_USE]
    # The tool's result is the child's validated answer, as JSON the coordinator can parse.
    assert Finding.model_validate_json(result.payload[PayloadKey.RESULT]) == Finding(
        topic="otters", confidence=0.9
    )
    assert turn.last_text == 'finding: {"topic": "otters", "confidence": 0.9}'


def test_agent_tool_is_checked_where_it_is_written() -> None:
    helper = EngineBuilder("openai:helper")
    with pytest.raises(ConfigurationError, match="name"):
        EngineBuilder("openai:boss").agent_tool("has spaces", "x", helper)
    with pytest.raises(ConfigurationError, match="already declared"):
        EngineBuilder("openai:boss").agent_tool("a", "x", helper).agent_tool("a", "y", helper)
    with pytest.raises(ConfigurationError, match="max_agent_depth"):
        EngineBuilder("openai:boss").max_agent_depth(0)
    # The nested spec travels as JSON and comes back equal.
    spec = EngineBuilder("openai:boss").agent_tool("a", "x", helper.max_iterations(2)).build()
    assert EngineSpec.model_validate_json(spec.wire_json()) == spec
    assert spec.agents[0].engine.max_iterations == 2
