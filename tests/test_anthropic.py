"""Anthropic Messages specifics: thinking with signatures, usage, overload, env, model switching.

Everything goes through the official `anthropic` SDK over real HTTP to the scripted server
(its `/v1/messages` wire); the shared tool-loop matrix runs in test_provider_matrix.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from anthropic.types import ThinkingConfigEnabledParam
from temporalio.client import Client
from temporalio.worker import Worker

from geppetto_temporal import BlockKind, EngineBuilder, Session, create_worker
from geppetto_temporal.engines._endpoints import Endpoint, EndpointRegistry
from geppetto_temporal.engines._factory import EngineFactory
from geppetto_temporal.engines._spec import EngineSpec
from geppetto_temporal.engines._step import StepOutput
from geppetto_temporal.engines.anthropic_messages import (
    DEFAULT_MAX_TOKENS,
    REDACTED_DATA,
    SIGNATURE,
    AnthropicMessagesEngine,
    build_request,
)
from geppetto_temporal.events import PartialThinkingEvent
from geppetto_temporal.retry import RetrySpec
from geppetto_temporal.testing import AnthropicMessagesWire, ScriptedModelServer
from geppetto_temporal.tools import ToolRegistry
from geppetto_temporal.tools.examples import calculate, get_weather
from geppetto_temporal.turns import (
    Block,
    PayloadKey,
    llm_text_block,
    system_block,
    tool_call_block,
    tool_use_block,
    user_block,
)
from tests.conftest import SECRET_API_KEY, TASK_QUEUE, scripted_endpoints

THINKING: ThinkingConfigEnabledParam = {"type": "enabled", "budget_tokens": 2048}
FAST_RETRY = RetrySpec(maximum_attempts=4, initial_interval_seconds=0.05, backoff_coefficient=1.0)


def anthropic_engine(base_url: str, **extra: Any) -> EngineBuilder:
    builder = EngineBuilder("anthropic:claude-scripted").base_url(base_url)
    return builder.llm_activity(heartbeat_seconds=5).extra(**extra)


@pytest.fixture
def anthropic_session(
    client: Client, worker: Worker, model_server: ScriptedModelServer
) -> Callable[..., Any]:
    """Factory: a session on a fresh script, talking Anthropic Messages to the scripted server."""

    async def make(
        script: dict[str, Any], *, configure: Callable[[EngineBuilder], EngineBuilder] | None = None
    ) -> tuple[Session, str]:
        base_url = model_server.add_script(script)
        builder = anthropic_engine(base_url)
        if configure is not None:
            builder = configure(builder)
        session = await Session.create(
            client,
            builder,
            session_id=f"test-anthropic-{uuid.uuid4().hex[:10]}",
            task_queue=TASK_QUEUE,
        )
        return session, base_url

    return make


def bodies(server: ScriptedModelServer, base_url: str) -> list[dict[str, Any]]:
    return [r.body for r in server.requests(base_url)]


# ---------------------------------------------------------------------------------------------
# Thinking across a multi-step tool loop
# ---------------------------------------------------------------------------------------------

THINK_AND_CALL = {
    "rules": [
        {
            "name": "first-call",
            "when": {"last_role": "user"},
            "reply": {
                "reasoning": {
                    "summary": "The user wants Paris weather.",
                    "encrypted_content": "sig-1",
                },
                "text": "Looking it up.",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
                "chunk_size": 5,
            },
        },
        {
            "name": "second-call",
            "when": {"last_role": "tool", "assistant_turns_since_user": 1},
            "reply": {
                "reasoning": {"summary": "Now the temperature sum.", "encrypted_content": "sig-2"},
                "tool_calls": [
                    {"name": "calculate", "arguments": {"expression": "20 + 1"}},
                    {"name": "calculate", "arguments": {"expression": "2 * 2"}},
                ],
            },
        },
        {
            "name": "answer",
            "when": {"last_role": "tool"},
            "reply": {"text": "Done: {tool_results}"},
        },
    ]
}


async def test_thinking_blocks_with_signatures_survive_a_multi_step_tool_loop(
    anthropic_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await anthropic_session(
        THINK_AND_CALL, configure=lambda b: b.extra(thinking=THINKING).sampling(temperature=0.3)
    )
    turn = await (await session.start_inference("weather in Paris?")).wait()

    kinds = [b.kind for b in turn.blocks]
    assert kinds == [
        BlockKind.USER,
        BlockKind.REASONING,
        BlockKind.LLM_TEXT,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_USE,
        BlockKind.REASONING,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_USE,
        BlockKind.TOOL_USE,
        BlockKind.LLM_TEXT,
    ]
    reasoning = [b for b in turn.blocks if b.kind == BlockKind.REASONING]
    assert [(b.text, b.payload[SIGNATURE]) for b in reasoning] == [
        ("The user wants Paris weather.", "sig-1"),
        ("Now the temperature sum.", "sig-2"),
    ]

    first, second, third = bodies(model_server, base_url)
    # Thinking is passed through; temperature is not sent with it; max_tokens leaves room.
    assert first["thinking"] == THINKING and "temperature" not in first
    assert first["max_tokens"] == THINKING["budget_tokens"] + DEFAULT_MAX_TOKENS
    # The second request sent the signed thinking back verbatim, before the tool_use.
    assistant = second["messages"][1]
    assert assistant["role"] == "assistant"
    assert [c["type"] for c in assistant["content"]] == ["thinking", "text", "tool_use"]
    assert assistant["content"][0] == {
        "type": "thinking",
        "thinking": "The user wants Paris weather.",
        "signature": "sig-1",
    }
    # ... and the third request both thinking blocks, each leading its assistant message.
    thinking = [
        (m["content"][0]["type"], m["content"][0].get("signature"))
        for m in third["messages"]
        if m["role"] == "assistant"
    ]
    assert thinking == [("thinking", "sig-1"), ("thinking", "sig-2")]
    # Parallel tool results went back in one user message, in call order.
    results = third["messages"][-1]
    assert [c["type"] for c in results["content"]] == ["tool_result", "tool_result"]
    assert [json.loads(c["content"])["result"] for c in results["content"]] == [21, 4]
    assert turn.last_text.startswith("Done: ")
    assert turn.metadata.stop_reason == "end_turn"


async def test_thinking_streams_as_partial_thinking_events(anthropic_session: Any) -> None:
    session, _ = await anthropic_session(
        {
            "rules": [
                {
                    "reply": {
                        "reasoning": {"summary": "Let me think about this carefully."},
                        "text": "Forty-two.",
                        "chunk_size": 4,
                    }
                }
            ]
        },
        configure=lambda b: b.extra(thinking=THINKING),
    )
    handle = await session.start_inference("the answer?")
    events = [e async for e in handle.events()]
    turn = await handle.wait()
    thinking = [e for e in events if isinstance(e, PartialThinkingEvent)]
    assert thinking and "".join(e.delta for e in thinking) == "Let me think about this carefully."
    first_text = next(i for i, e in enumerate(events) if e.type == "partial")
    assert events.index(thinking[0]) < first_text  # thinking streams before the answer
    [reasoning] = [b for b in turn.blocks if b.kind == BlockKind.REASONING]
    # Without encrypted_content the scripted server signs deterministically; it is kept.
    assert reasoning.payload[SIGNATURE]
    assert turn.last_text == "Forty-two."


async def test_usage_includes_cache_tokens(anthropic_session: Any) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 20, "cached_tokens": 600}
    usage |= {"cache_creation_tokens": 300}
    session, _ = await anthropic_session({"rules": [{"reply": {"text": "ok", "usage": usage}}]})
    turn = await (await session.start_inference("cache me")).wait()
    assert turn.metadata.usage is not None
    got = turn.metadata.usage
    # Anthropic reports 100 uncached + 300 written + 600 read; input_tokens counts them all.
    assert got.input_tokens == 1000 and got.output_tokens == 20
    assert got.cache_creation_input_tokens == 300 and got.cache_read_input_tokens == 600
    assert got.cached_tokens == 600


async def test_overloaded_then_success(
    anthropic_session: Any, model_server: ScriptedModelServer
) -> None:
    script = {
        "rules": [
            {
                "reply": {"text": "finally an answer"},
                "faults": [
                    {"status": 529},  # HTTP 529 overloaded_error
                    {"status": 529, "error_after_chunks": 3},  # `error` event mid-stream
                ],
            }
        ]
    }
    session, base_url = await anthropic_session(
        script, configure=lambda b: b.llm_activity(retry=FAST_RETRY)
    )
    turn = await (await session.start_inference("are you there?")).wait()
    assert turn.last_text == "finally an answer"
    [text] = [b for b in turn.blocks if b.kind == BlockKind.LLM_TEXT]
    assert text.metadata["attempt"] == 3
    requests = model_server.requests(base_url)
    assert [(r.status, r.outcome) for r in requests] == [
        (529, "error"),
        (200, "stream_error"),
        (200, "completed"),
    ]


# ---------------------------------------------------------------------------------------------
# ANTHROPIC_BASE_URL
# ---------------------------------------------------------------------------------------------


def test_factory_follows_the_sdk_env_convention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://anthropic.example:8080")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    engine = EngineFactory().build(EngineSpec.parse("anthropic:claude-x"))
    assert isinstance(engine, AnthropicMessagesEngine)
    assert str(engine.client.base_url) == "http://anthropic.example:8080"
    assert engine.client.api_key == "sk-ant-test"
    # A spec's own base URL under an endpoint wins; an OpenAI-style trailing /v1 is tolerated.
    spec = EngineSpec.parse("anthropic:claude-x", base_url="http://other:1/v1")
    engine = EngineFactory(endpoints=EndpointRegistry([Endpoint("other", "http://other:1")])).build(
        spec
    )
    assert isinstance(engine, AnthropicMessagesEngine)
    assert str(engine.client.base_url) == "http://other:1"


def scripted_factory(model_server: ScriptedModelServer) -> EngineFactory:
    """The factory of a worker whose operator registered the scripted server."""
    return EngineFactory(endpoints=EndpointRegistry(scripted_endpoints(model_server.url)))


@pytest.fixture
async def env_worker(
    client: Client, model_server: ScriptedModelServer
) -> AsyncIterator[tuple[str, str]]:
    """A worker whose environment has only ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL."""
    script = {"rules": [{"reply": {"text": "Hello from {last_user}"}}]}
    base_url = model_server.add_script(script)
    environ = {
        "ANTHROPIC_API_KEY": SECRET_API_KEY,
        "ANTHROPIC_BASE_URL": base_url.removesuffix("/v1"),
    }
    task_queue = f"anthropic-env-{uuid.uuid4().hex[:8]}"
    worker = create_worker(
        client,
        task_queue=task_queue,
        tools=ToolRegistry([get_weather]),
        engines=EngineFactory(environ),
    )
    async with worker:
        yield task_queue, base_url


async def test_anthropic_base_url_env_when_the_spec_has_none(
    client: Client, env_worker: tuple[str, str], model_server: ScriptedModelServer
) -> None:
    task_queue, base_url = env_worker
    engine = EngineBuilder("anthropic:claude-env").llm_activity(heartbeat_seconds=5)
    session = await Session.create(client, engine, task_queue=task_queue)
    turn = await (await session.start_inference("env")).wait()
    assert turn.last_text == "Hello from env"
    [request] = model_server.requests(base_url)
    assert request.path.endswith("/v1/messages") and request.status == 200
    # The key from the worker's environment went out (as x-api-key or bearer, by SDK version).
    sent = request.headers.get("x-api-key") or request.headers.get("authorization")
    assert sent == "<redacted>"


# ---------------------------------------------------------------------------------------------
# Switching provider between prompts
# ---------------------------------------------------------------------------------------------

SWITCH = {
    "rules": [
        {
            "name": "weather-call",
            "when": {"last_role": "user", "last_user_contains": "weather"},
            "reply": {
                "text": "Checking the weather.",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
            },
        },
        {
            "name": "math-call",
            "when": {"last_role": "user", "last_user_contains": "math"},
            "reply": {
                "reasoning": {"summary": "Simple arithmetic.", "encrypted_content": "sig-math"},
                "text": "Calculating.",
                "tool_calls": [{"name": "calculate", "arguments": {"expression": "6 * 7"}}],
            },
        },
        {
            "name": "answer",
            "when": {"last_role": "tool"},
            "reply": {"text": "Result: {tool_results}"},
        },
        {"name": "recap", "reply": {"text": "Recap of {last_user}"}},
    ]
}


async def test_switching_model_between_prompts_keeps_the_conversation(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(SWITCH)  # openai:scripted (Chat Completions)
    first = await (await session.start_inference("weather in Oslo?")).wait()
    [openai_call] = [b for b in first.blocks if b.kind == BlockKind.TOOL_CALL]

    claude = anthropic_engine(base_url, thinking=THINKING)
    second = await (await session.start_inference("now some math", engine=claude)).wait()
    assert second.metadata.provider == "anthropic"
    [claude_call] = [b for b in second.blocks_since_last_user() if b.kind == BlockKind.TOOL_CALL]

    openai = EngineBuilder("openai:scripted").base_url(base_url).llm_activity(heartbeat_seconds=5)
    third = await (await session.start_inference("recap please", engine=openai)).wait()
    assert third.last_text == "Recap of recap please"

    requests = model_server.requests(base_url)
    paths = [r.path.rsplit("/v1/", 1)[1] for r in requests]
    assert paths == ["chat/completions"] * 2 + ["messages"] * 2 + ["chat/completions"]

    # The Anthropic request carried the OpenAI tool call and its result, converted.
    messages = requests[2].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "text", "text": "Checking the weather."},
        {
            "type": "tool_use",
            "id": openai_call.call_id,
            "name": "get_weather",
            "input": {"city": "Oslo"},
        },
    ]
    [result] = messages[2]["content"]
    assert result["type"] == "tool_result" and result["tool_use_id"] == openai_call.call_id
    assert json.loads(result["content"])["city"] == "Oslo"
    assert messages[3]["content"][0]["type"] == "text"  # the OpenAI answer
    assert messages[4]["content"] == [{"type": "text", "text": "now some math"}]

    # The OpenAI request after it carried the Anthropic turn (thinking has no Chat form).
    chat = requests[4].body["messages"]
    assert [m["role"] for m in chat] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert chat[5]["content"] == "Calculating."
    assert chat[5]["tool_calls"] == [
        {
            "id": claude_call.call_id,
            "type": "function",
            "function": {"name": "calculate", "arguments": '{"expression":"6 * 7"}'},
        }
    ]
    assert chat[6]["tool_call_id"] == claude_call.call_id
    assert json.loads(chat[6]["content"])["result"] == 42
    assert chat[7]["content"].startswith("Result: ")
    # The whole conversation is one block list with all three providers' output.
    turns = await session.turns()
    assert [t.metadata.provider for t in turns] == ["openai", "anthropic", "openai"]


# ---------------------------------------------------------------------------------------------
# Round trip: Turn -> request -> scripted reply -> Turn (no Temporal)
# ---------------------------------------------------------------------------------------------


def conversation() -> list[Block]:
    thinking = Block(
        id="r1",
        kind=BlockKind.REASONING,
        role="assistant",
        payload={PayloadKey.TEXT: "Think first.", SIGNATURE: "sig-a"},
    )
    redacted = Block(
        id="r2", kind=BlockKind.REASONING, role="assistant", payload={REDACTED_DATA: "opaque"}
    )
    foreign = Block(  # an OpenAI Responses reasoning item: no Anthropic form, skipped
        id="r3",
        kind=BlockKind.REASONING,
        payload={PayloadKey.TEXT: "hidden", PayloadKey.ENCRYPTED_CONTENT: "gAAA"},
    )
    return [
        system_block("Be brief."),
        user_block("weather and math"),
        thinking,
        redacted,
        llm_text_block("On it."),
        tool_call_block("toolu_1", "get_weather", {"city": "Rome"}),
        tool_call_block("toolu_2", "calculate", '{"expression": "1 +'),  # invalid JSON kept raw
        tool_use_block("toolu_1", result={"city": "Rome", "temp": 20}),
        tool_use_block("toolu_2", error="arguments for calculate are not valid JSON"),
        foreign,
        llm_text_block("Rome is 20 degrees."),
        user_block("and Paris?"),
    ]


def test_turn_to_request_conversion() -> None:
    spec = EngineSpec.parse("anthropic:claude-x", temperature=0.5, stop=("END",), max_tokens=300)
    tools = [t.definition() for t in ToolRegistry([get_weather, calculate]).select(None)]
    request = build_request(conversation(), tools, spec)
    assert request["system"] == "Be brief."
    assert request["max_tokens"] == 300 and request["temperature"] == 0.5
    assert request["stop_sequences"] == ["END"]
    assert request["tool_choice"] == {"type": "auto"}
    assert [t["name"] for t in request["tools"]] == ["get_weather", "calculate"]
    assert "input_schema" in request["tools"][0]
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather and math"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Think first.", "signature": "sig-a"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "On it."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "calculate",
                    "input": {"_raw_arguments": '{"expression": "1 +'},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": '{"city": "Rome", "temp": 20}',
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": '{"error": "arguments for calculate are not valid JSON"}',
                    "is_error": True,
                },
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Rome is 20 degrees."}]},
        {"role": "user", "content": [{"type": "text", "text": "and Paris?"}]},
    ]
    # The scripted server validates requests like the API: this one is well-formed.
    parsed = AnthropicMessagesWire().parse({**request, "stream": True})
    assert [m.role for m in parsed.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
    ]
    # Parallel tool use can be turned off.
    one_at_a_time = spec.model_copy(
        update={"tools": spec.tools.model_copy(update={"max_parallel_tools": 1})}
    )
    request = build_request(conversation(), tools, one_at_a_time)
    assert request["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_round_trip_turn_request_reply_turn(model_server: ScriptedModelServer) -> None:
    reply = {
        "reasoning": {"summary": "Paris, then.", "encrypted_content": "sig-b"},
        "text": "Checking Paris.",
        "tool_calls": [
            {"id": "toolu_p", "name": "get_weather", "arguments": {"city": "Paris"}},
            {"id": "toolu_q", "name": "calculate", "arguments": {"expression": "3 * 3"}},
        ],
        "chunk_size": 3,
    }
    base_url = model_server.add_script({"rules": [{"reply": reply}]})
    spec = EngineSpec.parse("anthropic:claude-x", base_url=base_url)
    engine = scripted_factory(model_server).build(spec)
    tools = [t.definition() for t in ToolRegistry([get_weather, calculate]).select(None)]
    blocks = conversation()
    output = StepOutput()
    await engine.stream_step(blocks, tools, spec, output)
    new = output.blocks()

    # Reply -> Turn: thinking (signed), text, both tool calls, in stream order.
    assert [b.kind for b in new] == [
        BlockKind.REASONING,
        BlockKind.LLM_TEXT,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_CALL,
    ]
    assert new[0].payload == {PayloadKey.TEXT: "Paris, then.", SIGNATURE: "sig-b"}
    assert new[1].text == "Checking Paris."
    assert [(b.call_id, b.payload[PayloadKey.ARGS]) for b in new[2:]] == [
        ("toolu_p", {"city": "Paris"}),
        ("toolu_q", {"expression": "3 * 3"}),
    ]
    assert output.stop_reason == "tool_use" and output.model == "claude-x"

    # Turn -> request again: the assistant message is exactly what the server sent.
    sent = model_server.requests(base_url)[-1]
    assert sent.body["messages"] == build_request(blocks, tools, spec)["messages"]
    plain = await _non_streaming(model_server, base_url, sent.body)
    again = build_request([*blocks, *new], tools, spec)["messages"][-1]
    assert again == {"role": "assistant", "content": _without_citations(plain["content"])}


async def _non_streaming(
    server: ScriptedModelServer, base_url: str, body: dict[str, Any]
) -> dict[str, Any]:
    """The same request answered as one JSON message (the wire's non-streaming form)."""
    from anthropic import AsyncAnthropic

    client = AsyncAnthropic(api_key=SECRET_API_KEY, base_url=base_url.removesuffix("/v1"))
    message = await client.messages.create(
        model=body["model"], max_tokens=body["max_tokens"], messages=body["messages"]
    )
    await client.close()
    return message.model_dump(mode="json", exclude_none=True)


def _without_citations(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k != "citations"} for c in content]


# ---------------------------------------------------------------------------------------------
# Error taxonomy, with the SDK's real exceptions from the scripted server
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "retryable", "wire_type", "words"),
    [
        ({"status": 529}, True, "overloaded_error", ["HTTP 529", "will retry"]),
        ({"status": 429, "retry_after": 2}, True, "rate_limit_error", ["HTTP 429"]),
        ({"status": 500}, True, "api_error", ["HTTP 500"]),
        ({"status": 529, "error_after_chunks": 2}, True, "overloaded_error", ["mid-stream"]),
        ({"status": 400}, False, "invalid_request_error", ["HTTP 400", "rejected"]),
        ({"status": 401}, False, "authentication_error", ["HTTP 401", "ANTHROPIC_API_KEY"]),
        ({"status": 403}, False, "permission_error", ["HTTP 403", "ANTHROPIC_API_KEY"]),
        ({"status": 404}, False, "not_found_error", ["HTTP 404", "'claude-x'"]),
    ],
    ids=["529", "429", "500", "stream-error-event", "400", "401", "403", "404"],
)
async def test_error_taxonomy(
    model_server: ScriptedModelServer,
    fault: dict[str, Any],
    retryable: bool,
    wire_type: str,
    words: list[str],
) -> None:
    from geppetto_temporal.engines._errors import classify_error

    base_url = model_server.add_script({"rules": [{"reply": {"text": "hi"}, "faults": [fault]}]})
    spec = EngineSpec.parse("anthropic:claude-x", base_url=base_url)
    factory = scripted_factory(model_server)
    engine = factory.build(spec)
    with pytest.raises(Exception) as info:
        await engine.stream_step([user_block("hello")], [], spec, StepOutput())
    error = classify_error(info.value, spec, key_env=factory.resolve(spec).key_env)
    assert error.non_retryable is not retryable
    for word in words:
        assert word in error.message
    if fault.get("retry_after"):
        assert error.next_retry_delay is not None
        assert error.next_retry_delay.total_seconds() == 2
    # The body (or stream event) had Anthropic's error shape.
    cause: Any = info.value.__cause__ or info.value
    assert cause.body["error"]["type"] == wire_type


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        (
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {"role": "user", "content": "no result"},
            ],
            "without `tool_result`",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "x"}]},
            ],
            "signature",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "first"},
                        {"type": "tool_result", "tool_use_id": "t1", "content": "1"},
                    ],
                },
            ],
            "must come before",
        ),
        ([{"role": "system", "content": "x"}], "role"),
        ([{"role": "user", "content": "  "}], "non-whitespace"),
    ],
    ids=["unanswered-tool-use", "unsigned-thinking", "result-after-text", "system-role", "blank"],
)
async def test_the_scripted_wire_rejects_what_the_api_rejects(
    model_server: ScriptedModelServer, messages: list[dict[str, Any]], problem: str
) -> None:
    from anthropic import AsyncAnthropic, BadRequestError

    base_url = model_server.add_script({"rules": [{"reply": {"text": "ok"}}]})
    root = base_url.removesuffix("/v1")
    client = AsyncAnthropic(api_key=SECRET_API_KEY, base_url=root, max_retries=0)
    with pytest.raises(BadRequestError) as info:
        await client.messages.create(model="m", max_tokens=10, messages=messages)  # type: ignore[arg-type]
    await client.close()
    assert problem in info.value.message
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
