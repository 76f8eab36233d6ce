"""One tool-loop matrix for every provider, plus what only the Responses API has.

Each case runs a real session on the real Temporal dev server; the worker calls the
scripted model through the provider's official SDK over real HTTP, in that provider's
wire format. Adding a provider to the matrix is one `ProviderCase` in `PROVIDERS`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from openai import AsyncOpenAI

from geppetto_temporal import (
    BlockKind,
    EngineBuilder,
    EngineSpec,
    InferenceCancelled,
    InferenceFailed,
    InferenceStatus,
    MaxIterationsReached,
)
from geppetto_temporal.engines import DEFAULT_API_KEY_ENV
from geppetto_temporal.engines._errors import ProviderStreamError, classify_error
from geppetto_temporal.engines._step import StepOutput
from geppetto_temporal.engines.openai_responses import (
    OpenAIResponsesEngine,
    build_request,
    to_input,
)
from geppetto_temporal.errors import ErrorType
from geppetto_temporal.events import PartialEvent, PartialThinkingEvent
from geppetto_temporal.retry import RetrySpec
from geppetto_temporal.testing import NormalizedRequest, ScriptedModelServer
from geppetto_temporal.tools._tool import ToolDefinition
from geppetto_temporal.turns import (
    Block,
    BlockMetaKey,
    PayloadKey,
    llm_text_block,
    system_block,
    tool_call_block,
    tool_use_block,
    user_block,
)
from tests.scripts import FAILING, SLOW_STORY, STORY, WEATHER_AND_MATH, faulty
from tests.watch import EventWatch, assert_no_delta_after_interrupt

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class ProviderCase:
    """How to reach the scripted model with one provider.

    `prefix` is the spec prefix (`<prefix>:scripted`); `url_suffix` is appended to the
    script's root URL to form the SDK's base URL (OpenAI SDKs want `.../v1`, the
    Anthropic SDK adds `/v1` itself, so it takes `""`).
    """

    prefix: str
    url_suffix: str = "/v1"
    api_key_env: str | None = None

    def __str__(self) -> str:
        return self.prefix

    @property
    def key_env(self) -> str:
        return self.api_key_env or DEFAULT_API_KEY_ENV[self.prefix]


PROVIDERS: list[ProviderCase] = [
    ProviderCase("openai"),
    ProviderCase("openai-responses"),
    ProviderCase("anthropic", url_suffix=""),
]

#: Short retry intervals so transient-fault cases take a fraction of a second.
FAST_RETRY = RetrySpec(maximum_attempts=4, initial_interval_seconds=0.1, backoff_coefficient=1.0)

Configure = Callable[[EngineBuilder], EngineBuilder]


def for_provider(case: ProviderCase, configure: Configure | None = None) -> Configure:
    """Turn the `new_session` fixture's `openai:scripted` engine into `case`'s engine."""

    def apply(builder: EngineBuilder) -> EngineBuilder:
        spec = builder.build()
        root = (spec.base_url or "").removesuffix("/v1")
        builder = EngineBuilder(
            EngineSpec.model_validate(
                {
                    **spec.model_dump(),
                    "provider": case.prefix,
                    "base_url": root + case.url_suffix,
                    "api_key_env": case.api_key_env,
                }
            )
        )
        return configure(builder) if configure is not None else builder

    return apply


@pytest.fixture(params=PROVIDERS, ids=str)
def provider(request: pytest.FixtureRequest) -> ProviderCase:
    case: ProviderCase = request.param
    return case


@pytest.fixture
def provider_session(new_session: Any, provider: ProviderCase) -> Callable[..., Any]:
    """Like `new_session`, with the engine of the parametrized provider."""

    async def make(script: dict[str, Any], *, configure: Configure | None = None) -> Any:
        return await new_session(script, configure=for_provider(provider, configure))

    return make


def conversations(server: ScriptedModelServer, base_url: str) -> list[NormalizedRequest]:
    """Every model request of a script, as the rules saw it (wire-independent)."""
    out: list[NormalizedRequest] = []
    for record in server.requests(base_url):
        conversation = record.conversation()
        assert conversation is not None, record.body
        out.append(conversation)
    return out


def tool_messages(server: ScriptedModelServer, base_url: str) -> list[str]:
    """The tool results the model received in the last request, in order."""
    last = conversations(server, base_url)[-1]
    return [m.text for m in last.messages if m.role == "tool"]


async def eventually(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Wait until `condition()` holds, polling."""
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def kinds(blocks: list[Block]) -> list[BlockKind]:
    return [b.kind for b in blocks if b.kind != BlockKind.REASONING]


# ---------------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------------


async def test_parallel_calls_keep_order(
    provider_session: Any, provider: ProviderCase, model_server: ScriptedModelServer
) -> None:
    session, base_url = await provider_session(WEATHER_AND_MATH)
    turn = await (await session.start_inference("Paris, Berlin and 6*7?")).wait()
    assert kinds(turn.blocks) == [
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
    assert [c.payload[PayloadKey.ARGS] for c in calls] == [
        {"city": "Paris"},
        {"expression": "6 * 7"},
        {"city": "Berlin"},
    ]
    assert [r.call_id for r in results] == [c.call_id for c in calls]
    assert results[1].payload[PayloadKey.RESULT] == {"expression": "6 * 7", "result": 42}
    seen = [json.loads(t) for t in tool_messages(model_server, base_url)]
    assert [s.get("city", s.get("result")) for s in seen] == ["Paris", 42, "Berlin"]
    # The model's second request carried the calls, paired by id with their results.
    last = conversations(model_server, base_url)[-1]
    [assistant] = [m for m in last.messages if m.role == "assistant"]
    assert [c.id for c in assistant.tool_calls] == [c.call_id for c in calls]
    assert turn.last_text.startswith("Done: ")
    assert turn.metadata.status == InferenceStatus.COMPLETED
    assert turn.metadata.provider == provider.prefix


async def test_tool_error_reaches_the_model(
    provider_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await provider_session(FAILING)
    turn = await (await session.start_inference("try it")).wait()
    [result] = [b for b in turn.blocks if b.kind == BlockKind.TOOL_USE]
    assert result.payload[PayloadKey.ERROR] == "RuntimeError: tool exploded: boom"
    [seen] = tool_messages(model_server, base_url)
    assert "tool exploded: boom" in seen
    assert "tool exploded" in turn.last_text
    assert turn.metadata.status == InferenceStatus.COMPLETED


LOOPING = {
    "rules": [
        {"reply": {"tool_calls": [{"name": "calculate", "arguments": {"expression": "1 + 1"}}]}}
    ]
}


async def test_max_iterations(provider_session: Any) -> None:
    session, _ = await provider_session(LOOPING, configure=lambda b: b.max_iterations(3))
    with pytest.raises(MaxIterationsReached) as info:
        await (await session.start_inference("loop forever")).wait()
    turn = info.value.turn
    assert turn is not None and turn.metadata.status == InferenceStatus.MAX_ITERATIONS
    assert kinds(turn.blocks).count(BlockKind.TOOL_CALL) == 3
    assert kinds(turn.blocks).count(BlockKind.TOOL_USE) == 3
    assert (await session.turns())[-1].metadata.status == InferenceStatus.MAX_ITERATIONS


async def test_cancel_mid_stream_keeps_partial_text(
    provider_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await provider_session(SLOW_STORY)
    handle = await session.start_inference("tell me a story")
    watch = EventWatch(handle)
    await watch.first(PartialEvent)  # the reply is streaming
    await handle.cancel()
    with pytest.raises(InferenceCancelled) as info:
        await handle.wait()
    turn = info.value.turn
    assert turn is not None and turn.metadata.status == InferenceStatus.CANCELLED
    [partial] = [b for b in turn.blocks if b.kind == BlockKind.LLM_TEXT]
    assert partial.metadata[BlockMetaKey.INTERRUPTED] is True
    assert partial.text.startswith("Once upon a time") and 0 < len(partial.text) < len(STORY)
    # Every delta came before the interrupt, which carries the kept text.
    interrupt = assert_no_delta_after_interrupt(await watch.finished())
    assert interrupt.text == partial.text
    # The HTTP stream really stopped.
    await eventually(lambda: model_server.requests(base_url)[0].outcome != "pending")
    assert model_server.requests(base_url)[0].outcome == "client_disconnected"
    # The session goes on, with the interrupted text as context.
    nxt = await (await session.start_inference("and now?")).wait()
    assert nxt.last_text == "Sure: and now?"
    last = conversations(model_server, base_url)[-1]
    assistant = [m for m in last.messages if m.role == "assistant"]
    assert [m.text for m in assistant] == [partial.text]


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429, "retry_after": 0.2},
        {"status": 500},
        {"cut_after_chunks": 2},
        {"status": 500, "error_after_chunks": 3},
    ],
    ids=["429", "500", "cut-stream", "error-event-mid-stream"],
)
async def test_transient_fault_then_success(
    provider_session: Any, model_server: ScriptedModelServer, fault: dict[str, Any]
) -> None:
    session, base_url = await provider_session(
        faulty(fault), configure=lambda b: b.llm_activity(retry=FAST_RETRY)
    )
    turn = await (await session.start_inference(f"try {fault}")).wait()
    assert turn.last_text == "finally an answer"
    texts = [b for b in turn.blocks if b.kind == BlockKind.LLM_TEXT]
    assert len(texts) == 1  # nothing of the failed attempt leaks into the turn
    assert texts[0].metadata[BlockMetaKey.ATTEMPT] == 2
    requests = model_server.requests(base_url)
    assert [r.fault is not None for r in requests] == [True, False]


async def test_unauthorized_fails_fast_with_a_clear_message(
    provider_session: Any, provider: ProviderCase, model_server: ScriptedModelServer
) -> None:
    script = {"rules": [{"reply": {"error": {"status": 401, "message": "invalid x-api-key"}}}]}
    session, base_url = await provider_session(script)
    with pytest.raises(InferenceFailed) as info:
        await (await session.start_inference("hello")).wait()
    message = str(info.value)
    assert "HTTP 401" in message and provider.key_env in message
    assert f"{provider.prefix}:scripted" in message
    # No retry: the inference has ended after one request.
    assert len(model_server.requests(base_url)) == 1
    assert info.value.turn is not None
    assert info.value.turn.metadata.status == InferenceStatus.FAILED
    assert not await session.is_running()


# ---------------------------------------------------------------------------------------------
# OpenAI Responses: reasoning, usage, sampling, conversion
# ---------------------------------------------------------------------------------------------

RESPONSES = ProviderCase("openai-responses")
REASONING = {"effort": "low", "summary": "auto"}


def responses(configure: Configure | None = None) -> Configure:
    def apply(builder: EngineBuilder) -> EngineBuilder:
        builder = builder.extra(reasoning=REASONING)
        return configure(builder) if configure is not None else builder

    return for_provider(RESPONSES, apply)


def input_items(server: ScriptedModelServer, base_url: str) -> list[list[dict[str, Any]]]:
    return [r.body["input"] for r in server.requests(base_url)]


THINKING_TOOLS = {
    "rules": [
        {
            "name": "first",
            "when": {"last_role": "user"},
            "reply": {
                "reasoning": {"summary": "Math first.", "encrypted_content": "enc-step-1"},
                "tool_calls": [{"name": "calculate", "arguments": {"expression": "6 * 7"}}],
            },
        },
        {
            "name": "second",
            "when": {"assistant_turns_since_user": 1},
            "reply": {
                "reasoning": {"summary": "Now the weather.", "encrypted_content": "enc-step-2"},
                "text": "Checking the weather.",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
            },
        },
        {
            "name": "answer",
            "reply": {
                "reasoning": {"summary": "Summing up.", "encrypted_content": "enc-step-3"},
                "text": "42, and Oslo: {tool_result_1}",
            },
        },
    ]
}


async def test_reasoning_survives_a_multi_step_tool_loop(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(THINKING_TOOLS, configure=responses())
    turn = await (await session.start_inference("6*7, then Oslo weather")).wait()
    assert [b.kind for b in turn.blocks] == [
        BlockKind.USER,
        BlockKind.REASONING,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_USE,
        BlockKind.REASONING,
        BlockKind.LLM_TEXT,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_USE,
        BlockKind.REASONING,
        BlockKind.LLM_TEXT,
    ]
    reasoning = [b for b in turn.blocks if b.kind == BlockKind.REASONING]
    assert [r.payload[PayloadKey.ENCRYPTED_CONTENT] for r in reasoning] == [
        "enc-step-1",
        "enc-step-2",
        "enc-step-3",
    ]
    assert [r.text for r in reasoning] == ["Math first.", "Now the weather.", "Summing up."]
    assert all(str(r.payload[PayloadKey.ITEM_ID]).startswith("rs_") for r in reasoning)
    calls = [b for b in turn.blocks if b.kind == BlockKind.TOOL_CALL]
    assert all(str(c.payload[PayloadKey.ITEM_ID]).startswith("fc_") for c in calls)

    first, second, third = input_items(model_server, base_url)
    for body in (r.body for r in model_server.requests(base_url)):
        assert body["include"] == ["reasoning.encrypted_content"]
        assert body["reasoning"] == REASONING
    assert not any(i.get("type") == "reasoning" for i in first)
    # Step 2 got step 1's reasoning back, right before the call it led to (with its item id).
    sent = [i for i in second if i.get("type") == "reasoning"]
    assert sent == [
        {
            "type": "reasoning",
            "id": reasoning[0].payload[PayloadKey.ITEM_ID],
            "summary": [{"type": "summary_text", "text": "Math first."}],
            "encrypted_content": "enc-step-1",
        }
    ]
    follower = second[second.index(sent[0]) + 1]
    assert follower["type"] == "function_call"
    assert follower["id"] == calls[0].payload[PayloadKey.ITEM_ID]
    assert follower["call_id"] == calls[0].call_id
    # Step 3 got both earlier reasoning items, each before its output items.
    assert [i.get("encrypted_content") for i in third if i.get("type") == "reasoning"] == [
        "enc-step-1",
        "enc-step-2",
    ]
    types = [i.get("type", i.get("role")) for i in third]
    assert types == [
        "user",
        "reasoning",
        "function_call",
        "function_call_output",
        "reasoning",
        "message",
        "function_call",
        "function_call_output",
    ]
    assert turn.last_text.startswith("42, and Oslo: ")

    # The next prompt carries the whole reasoning history too.
    await (await session.start_inference("thanks")).wait()
    fourth = input_items(model_server, base_url)[3]  # the next inference's first step
    assert [i.get("encrypted_content") for i in fourth if i.get("type") == "reasoning"] == [
        "enc-step-1",
        "enc-step-2",
        "enc-step-3",
    ]


async def test_reasoning_summary_streams_as_partial_thinking(new_session: Any) -> None:
    summary = "First I think about the question, then about the answer."
    script = {
        "rules": [
            {
                "reply": {
                    "reasoning": {"summary": summary},
                    "text": "The answer.",
                    "chunk_size": 8,
                }
            }
        ]
    }
    session, _ = await new_session(script, configure=responses())
    handle = await session.start_inference("think")
    events = [e async for e in handle.events()]
    turn = await handle.wait()
    thinking = [e for e in events if isinstance(e, PartialThinkingEvent)]
    text = [e for e in events if isinstance(e, PartialEvent)]
    assert "".join(e.delta for e in thinking) == summary
    assert "".join(e.delta for e in text) == "The answer."
    assert events.index(thinking[0]) < events.index(text[0])
    assert thinking[-1].meta.inference_id == handle.inference_id
    [block] = [b for b in turn.blocks if b.kind == BlockKind.REASONING]
    assert block.text == summary


async def test_usage_includes_reasoning_and_cached_tokens(new_session: Any) -> None:
    script = {
        "rules": [
            {
                "reply": {
                    "reasoning": {"summary": "Hmm."},
                    "text": "Fine.",
                    "usage": {
                        "prompt_tokens": 120,
                        "completion_tokens": 40,
                        "cached_tokens": 64,
                        "reasoning_tokens": 25,
                    },
                }
            }
        ]
    }
    session, _ = await new_session(script, configure=responses())
    turn = await (await session.start_inference("count")).wait()
    usage = turn.metadata.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (120, 40)
    assert (usage.cached_tokens, usage.reasoning_tokens) == (64, 25)
    assert turn.metadata.stop_reason == "completed"
    assert turn.metadata.provider == "openai-responses"


async def test_sampling_is_not_sent_with_reasoning(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    script = {"rules": [{"reply": {"text": "ok"}}]}
    session, base_url = await new_session(
        script, configure=responses(lambda b: b.sampling(temperature=0.2, top_p=0.9))
    )
    # The scripted server, like the real API, rejects temperature next to reasoning.
    await (await session.start_inference("hi")).wait()
    [body] = [r.body for r in model_server.requests(base_url)]
    assert "temperature" not in body and "top_p" not in body
    assert body["reasoning"] == REASONING

    plain = EngineSpec.parse("openai-responses:gpt-4.1", temperature=0.2, top_p=0.9)
    request = build_request([user_block("hi")], [], plain)
    assert (request["temperature"], request["top_p"]) == (0.2, 0.9)
    assert "include" not in request and "reasoning" not in request
    for model in ("o3-mini", "o4-mini", "gpt-5", "gpt-5-mini", "o1"):
        spec = EngineSpec.parse(f"openai-responses:{model}", temperature=0.2, max_tokens=99)
        request = build_request([user_block("hi")], [], spec)
        assert "temperature" not in request, model
        assert request["include"] == ["reasoning.encrypted_content"]
        assert request["max_output_tokens"] == 99


def test_to_input_drops_reasoning_that_cannot_be_sent() -> None:
    def reasoning(item_id: str | None, encrypted: str | None) -> Block:
        payload: dict[str, Any] = {PayloadKey.TEXT: "why"}
        if item_id:
            payload[PayloadKey.ITEM_ID] = item_id
        if encrypted:
            payload[PayloadKey.ENCRYPTED_CONTENT] = encrypted
        return Block(id=f"b-{item_id}", kind=BlockKind.REASONING, payload=payload)

    call = tool_call_block("call_1", "calculate", {"expression": "1"})
    call.payload[PayloadKey.ITEM_ID] = "fc_1"
    blocks = [
        user_block("hi"),
        reasoning("rs_no_enc", None),  # no encrypted content: dropped
        reasoning("rs_ok", "enc"),
        call,
        tool_use_block("call_1", result=1),
        reasoning("rs_last", "enc"),  # nothing followed it (e.g. cancelled): dropped
    ]
    items = to_input(blocks)
    assert [i.get("type", i.get("role")) for i in items] == [
        "user",
        "reasoning",
        "function_call",
        "function_call_output",
    ]
    assert items[2]["id"] == "fc_1"
    # Without reasoning (a model that does not reason) no reasoning and no item ids are sent.
    items = to_input(blocks, send_reasoning=False)
    assert [i.get("type", i.get("role")) for i in items] == [
        "user",
        "function_call",
        "function_call_output",
    ]
    assert "id" not in items[1]


async def test_round_trip_turn_request_reply_turn(
    model_server: ScriptedModelServer, api_key_env: str
) -> None:
    """Turn -> Responses request -> scripted reply -> Turn, through the SDK over HTTP."""
    script = {
        "rules": [
            {
                "when": {"tool_result_count": 2},
                "reply": {
                    "reasoning": {"summary": "Both results are in.", "encrypted_content": "E2"},
                    "text": "Got {tool_results}",
                    "tool_calls": [{"name": "calculate", "raw_arguments": '{"expression": "1 +'}],
                },
            }
        ]
    }
    base_url = model_server.add_script(script)
    call_a = tool_call_block("call_a", "get_weather", {"city": "Paris"})
    call_b = tool_call_block("call_b", "calculate", {"expression": "2 + 2"})
    call_a.payload[PayloadKey.ITEM_ID], call_b.payload[PayloadKey.ITEM_ID] = "fc_a", "fc_b"
    earlier = Block(
        id="r1",
        kind=BlockKind.REASONING,
        payload={
            PayloadKey.TEXT: "Two tools.",
            PayloadKey.ITEM_ID: "rs_1",
            PayloadKey.ENCRYPTED_CONTENT: "E1",
        },
    )
    text = llm_text_block("Checking.")
    text.payload[PayloadKey.ITEM_ID] = "msg_1"
    blocks = [
        system_block("Be brief."),
        user_block("weather and math"),
        earlier,
        text,
        call_a,
        call_b,
        tool_use_block("call_a", result={"city": "Paris", "temp": 21}),
        tool_use_block("call_b", error="boom"),
    ]
    tools = [
        ToolDefinition(
            name="calculate",
            description="Evaluate.",
            parameters={"type": "object", "properties": {"expression": {"type": "string"}}},
        )
    ]
    spec = EngineSpec.parse("openai-responses:scripted", extra={"reasoning": REASONING})
    client = AsyncOpenAI(api_key=api_key_env, base_url=base_url, max_retries=0)
    output = StepOutput()
    async with client:
        await OpenAIResponsesEngine(client).stream_step(blocks, tools, spec, output)

    # Turn -> request: what the API received, as items and as a conversation.
    [record] = model_server.requests(base_url)
    assert record.body["tools"] == [
        {
            "type": "function",
            "name": "calculate",
            "description": "Evaluate.",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
        }
    ]
    assert record.body["input"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather and math"},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "Two tools."}],
            "encrypted_content": "E1",
        },
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
        },
        {
            "type": "function_call",
            "call_id": "call_a",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
            "id": "fc_a",
        },
        {
            "type": "function_call",
            "call_id": "call_b",
            "name": "calculate",
            "arguments": '{"expression":"2 + 2"}',
            "id": "fc_b",
        },
        {
            "type": "function_call_output",
            "call_id": "call_a",
            "output": '{"city": "Paris", "temp": 21}',
        },
        {"type": "function_call_output", "call_id": "call_b", "output": '{"error": "boom"}'},
    ]
    conversation = record.conversation()
    assert conversation is not None
    assert [(m.role, m.text) for m in conversation.messages] == [
        ("system", "Be brief."),
        ("user", "weather and math"),
        ("assistant", "Checking."),
        ("tool", '{"city": "Paris", "temp": 21}'),
        ("tool", '{"error": "boom"}'),
    ]
    assert [c.id for c in conversation.messages[2].tool_calls] == ["call_a", "call_b"]

    # Reply -> Turn: reasoning, text and the (malformed) call, in output order.
    new = output.blocks(attempt=3)
    assert [b.kind for b in new] == [BlockKind.REASONING, BlockKind.LLM_TEXT, BlockKind.TOOL_CALL]
    reasoning, answer, call = new
    assert reasoning.payload[PayloadKey.ENCRYPTED_CONTENT] == "E2"
    assert reasoning.text == "Both results are in."
    assert answer.text == 'Got {"city": "Paris", "temp": 21}; {"error": "boom"}'
    assert str(answer.payload[PayloadKey.ITEM_ID]).startswith("msg_")
    assert call.payload[PayloadKey.ARGS] == '{"expression": "1 +'
    assert call.metadata[BlockMetaKey.ARGS_INVALID] is True
    assert all(b.metadata[BlockMetaKey.ATTEMPT] == 3 for b in new)
    assert output.stop_reason == "tool_calls"
    assert output.thinking == "Both results are in."

    # ... and the new blocks go back the way the API sent them.
    again = to_input(new)
    assert [i["type"] for i in again] == ["reasoning", "message", "function_call"]
    assert again[0]["id"] == reasoning.payload[PayloadKey.ITEM_ID]
    assert again[2]["id"] == call.payload[PayloadKey.ITEM_ID]
    assert again[2]["arguments"] == '{"expression": "1 +'


async def test_non_streaming_responses_wire(
    model_server: ScriptedModelServer, api_key_env: str
) -> None:
    script = {
        "rules": [
            {
                "reply": {
                    "reasoning": {"summary": "Short.", "encrypted_content": "E"},
                    "text": "Hello.",
                    "tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}],
                }
            }
        ]
    }
    base_url = model_server.add_script(script)
    async with AsyncOpenAI(api_key=api_key_env, base_url=base_url, max_retries=0) as client:
        plain = await client.responses.create(model="scripted", input="hi")
        full = await client.responses.create(
            model="scripted",
            input="hi",
            reasoning={"effort": "low", "summary": "auto"},
            include=["reasoning.encrypted_content"],
        )
    assert [o.type for o in plain.output] == ["reasoning", "message", "function_call"]
    assert plain.output_text == "Hello."
    plain_reasoning: Any = plain.output[0]
    assert plain_reasoning.summary == [] and plain_reasoning.encrypted_content is None
    full_reasoning: Any = full.output[0]
    assert full_reasoning.summary[0].text == "Short." and full_reasoning.encrypted_content == "E"
    call: Any = full.output[2]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Rome"})
    assert full.usage is not None and full.usage.output_tokens_details.reasoning_tokens == 1


async def test_failed_response_event_that_is_final_fails_fast(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    script = faulty(
        {"status": 400, "error_after_chunks": 3, "code": "invalid_prompt", "message": "flagged"}
    )
    session, base_url = await new_session(
        script, configure=responses(lambda b: b.llm_activity(retry=FAST_RETRY))
    )
    with pytest.raises(InferenceFailed) as info:
        await (await session.start_inference("bad prompt")).wait()
    message = str(info.value)
    assert "invalid_prompt" in message and "flagged" in message
    assert "openai-responses:scripted" in message
    [record] = model_server.requests(base_url)
    assert record.outcome == "stream_error"


def test_stream_errors_are_classified_by_code() -> None:
    spec = EngineSpec.parse("openai-responses:gpt-5")
    retryable = classify_error(ProviderStreamError("busy", code="server_error"), spec)
    assert not retryable.non_retryable and retryable.type == ErrorType.PROVIDER_UNAVAILABLE
    limited = classify_error(ProviderStreamError("slow", code="rate_limit_exceeded"), spec)
    assert not limited.non_retryable and limited.type == ErrorType.PROVIDER_RATE_LIMITED
    final = classify_error(ProviderStreamError("no", code="invalid_prompt"), spec)
    assert final.non_retryable and final.type == ErrorType.PROVIDER_REQUEST_REJECTED
    assert "openai-responses:gpt-5" in final.message
    too_long = classify_error(
        ProviderStreamError("context window exceeded", code="context_length_exceeded"), spec
    )
    assert too_long.non_retryable and too_long.type == ErrorType.PROVIDER_CONTEXT_TOO_LONG


CHAT_THEN_RESPONSES = {
    "rules": [
        {
            "name": "call",
            "when": {"last_role": "user", "last_user_contains": "weather"},
            "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Lima"}}]},
        },
        {"name": "answer", "when": {"last_role": "tool"}, "reply": {"text": "{tool_results}"}},
        {"name": "other", "reply": {"text": "Earlier: {last_user}"}},
    ]
}


async def test_switching_between_chat_and_responses_keeps_the_conversation(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    session, base_url = await new_session(CHAT_THEN_RESPONSES)
    first = await (await session.start_inference("weather in Lima")).wait()
    spec = (await session.engine()).model_copy(update={"provider": "openai-responses"})
    second = await (await session.start_inference("and now?", engine=spec)).wait()
    assert second.last_text == "Earlier: and now?"
    assert second.blocks[: len(first.blocks)] == first.blocks
    # The Responses request carried the Chat turn's call and result.
    items = model_server.requests(base_url)[-1].body["input"]
    call = next(b for b in first.blocks if b.kind == BlockKind.TOOL_CALL)
    assert [i.get("type", i.get("role")) for i in items] == [
        "user",
        "function_call",
        "function_call_output",
        "assistant",
        "user",
    ]
    assert items[1]["call_id"] == items[2]["call_id"] == call.call_id
    assert model_server.requests(base_url)[-1].path.endswith("/v1/responses")


def test_message_without_text_deltas_still_gives_text() -> None:
    """Some compatible servers send the finished message item without text deltas."""
    from openai.types.responses import ResponseOutputItemDoneEvent, ResponseOutputMessage
    from openai.types.responses.response_output_text import ResponseOutputText

    from geppetto_temporal.engines.openai_responses import _StreamState

    message = ResponseOutputMessage(
        id="msg_1",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text="whole answer", annotations=[])],
    )
    output = StepOutput()
    _StreamState(output).apply(
        ResponseOutputItemDoneEvent(
            type="response.output_item.done", output_index=0, sequence_number=3, item=message
        )
    )
    [block] = output.blocks()
    assert block.text == "whole answer" and block.payload[PayloadKey.ITEM_ID] == "msg_1"
