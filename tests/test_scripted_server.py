"""Tests of the scripted OpenAI-compatible model server, through the real openai SDK over HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCallUnion,
    ChatCompletionToolParam,
)
from pydantic import ValidationError

from geppetto_temporal.testing import (
    Message,
    NormalizedRequest,
    Script,
    ScriptedModelServer,
    ScriptRunner,
    ToolCallRef,
    When,
    load_demo_script,
)

pytestmark = pytest.mark.timeout(30)

STORY = "The quick brown fox jumps over the lazy dog. " * 3

BASE_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "weather",
            "when": {"last_role": "user", "last_user_contains": "weather"},
            "reply": {
                "tool_calls": [
                    {"name": "get_weather", "arguments": {"city": "Paris"}},
                    {"name": "get_weather", "arguments": {"city": "Berlin"}},
                ]
            },
        },
        {
            "name": "after-tools",
            "when": {"last_role": "tool"},
            "reply": {
                "text": "Results: {tool_results} | second={tool_result_1} | "
                "missing=[{tool_result_5}] | asked={last_user} | {{literal}}"
            },
        },
        {
            "name": "broken-args",
            "when": {"last_user_contains": "broken"},
            "reply": {"tool_calls": [{"name": "get_weather", "raw_arguments": '{"city": "Par'}]},
        },
        {
            "name": "rate-limited",
            "when": {"last_user_contains": "ratelimit"},
            "reply": {"text": "finally through"},
            "faults": [{"status": 429, "retry_after": 0.2, "message": "slow down"}],
        },
        {
            "name": "rate-limited-ms",
            "when": {"last_user_contains": "ms-limit"},
            "reply": {"text": "through after ms"},
            "faults": [{"status": 429, "retry_after_ms": 150}],
        },
        {
            "name": "flaky",
            "when": {"last_user_contains": "flaky"},
            "reply": {"text": "recovered"},
            "faults": [{"status": 500}],
        },
        {
            "name": "cut",
            "when": {"last_user_contains": "cut me"},
            "reply": {"text": STORY, "chunk_size": 5},
            "faults": [{"cut_after_chunks": 3}],
        },
        {
            "name": "stall",
            "when": {"last_user_contains": "stall"},
            "reply": {"text": STORY, "chunk_size": 5},
            "faults": [{"stall_after_chunks": 2}, {"stall_after_chunks": 2}],
        },
        {
            "name": "slow-start",
            "when": {"last_user_contains": "slow start"},
            "reply": {"text": "worth the wait"},
            "faults": [{"delay": 0.5}],
        },
        {
            "name": "always-error",
            "when": {"last_user_contains": "forbidden"},
            "reply": {"error": {"status": 403, "message": "nope", "code": "no_access"}},
        },
        {
            "name": "concurrent",
            "when": {"last_user_regex": r"^client \d+$"},
            "reply": {"text": "echo: {last_user}", "chunk_size": 3, "chunk_delay": 0.002},
        },
        {
            "name": "default",
            "when": {"last_user_regex": "."},
            "reply": {"text": "Hello! You said: {last_user}", "chunk_size": 4},
        },
    ]
}


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def function_calls(
    calls: Sequence[ChatCompletionMessageToolCallUnion],
) -> list[ChatCompletionMessageFunctionToolCall]:
    """The tool calls of a reply as function calls: the scripted server makes no other kind."""
    out: list[ChatCompletionMessageFunctionToolCall] = []
    for call in calls:
        assert isinstance(call, ChatCompletionMessageFunctionToolCall), call
        out.append(call)
    return out


@pytest.fixture
async def server() -> AsyncIterator[ScriptedModelServer]:
    async with ScriptedModelServer(BASE_SCRIPT) as srv:
        yield srv


@pytest.fixture
async def client(server: ScriptedModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    c = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    async with c:
        yield c


async def collect(stream: openai.AsyncStream[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in stream]


async def wait_for(predicate: Any, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# ---- streaming / non-streaming text ------------------------------------------------------------


async def test_streaming_text_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=user("hi there"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = await collect(stream)
    expected = "Hello! You said: hi there"

    assert chunks[0].choices[0].delta.role == "assistant"
    content = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(content) == expected
    assert len(content) == math.ceil(len(expected) / 4)  # chunk_size=4
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])

    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == 4  # "be brief" + "hi there"
    assert usage_chunk.usage.completion_tokens == len(expected.split())
    assert usage_chunk.usage.total_tokens == 4 + len(expected.split())
    assert all(c.model == "gpt-test" for c in chunks)


async def test_streaming_without_usage_option_sends_no_usage_chunk(
    client: openai.AsyncOpenAI,
) -> None:
    chunks = await collect(
        await client.chat.completions.create(model="m", messages=user("hey"), stream=True)
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_non_streaming_text(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(model="gpt-test", messages=user("hello world"))
    assert resp.object == "chat.completion"
    assert resp.model == "gpt-test"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello! You said: hello world"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (4, 5)


# ---- tool calls ------------------------------------------------------------------------------------


WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


async def test_parallel_tool_calls_streamed(client: openai.AsyncOpenAI) -> None:
    messages = user("What's the weather in Paris and Berlin?")
    async with client.chat.completions.stream(
        model="m", messages=messages, tools=[WEATHER_TOOL]
    ) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 2
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris"},
        {"city": "Berlin"},
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    assert calls[0].id != calls[1].id

    # The raw deltas follow OpenAI's shape: id/name once per index, arguments in pieces.
    raw = await collect(
        await client.chat.completions.create(
            model="m", messages=messages, tools=[WEATHER_TOOL], stream=True
        )
    )
    deltas = [tc for c in raw if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    by_index: dict[int, list[Any]] = {0: [], 1: []}
    for d in deltas:
        by_index[d.index].append(d)
    for index, parts in by_index.items():
        assert parts[0].id == calls[index].id and parts[0].type == "function"
        assert parts[0].function is not None and parts[0].function.name == "get_weather"
        assert all(p.id is None for p in parts[1:])
        pieces = [p.function.arguments for p in parts if p.function and p.function.arguments]
        assert len(pieces) >= 2
        assert json.loads("".join(pieces)) == [{"city": "Paris"}, {"city": "Berlin"}][index]
    assert raw[-1].choices[0].finish_reason == "tool_calls"


async def test_non_streaming_tool_calls(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(model="m", messages=user("weather please"))
    msg = resp.choices[0].message
    assert msg.content is None
    assert msg.tool_calls is not None
    assert [json.loads(c.function.arguments) for c in function_calls(msg.tool_calls)] == [
        {"city": "Paris"},
        {"city": "Berlin"},
    ]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert resp.usage is not None and resp.usage.completion_tokens == 20


async def test_malformed_raw_arguments_arrive_verbatim(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(model="m", messages=user("broken please"))
    calls = resp.choices[0].message.tool_calls
    assert calls is not None
    assert function_calls(calls)[0].function.arguments == '{"city": "Par'

    chunks = await collect(
        await client.chat.completions.create(model="m", messages=user("broken please"), stream=True)
    )
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        if c.choices
        for tc in (c.choices[0].delta.tool_calls or [])
        if tc.function
    )
    assert args == '{"city": "Par'


async def test_tool_call_ids_deterministic_per_conversation(client: openai.AsyncOpenAI) -> None:
    async def ids(messages: list[ChatCompletionMessageParam], model: str = "m") -> list[str]:
        resp = await client.chat.completions.create(model=model, messages=messages)
        return [c.id for c in resp.choices[0].message.tool_calls or []]

    first = await ids(user("weather in Paris?"))
    retry = await ids(user("weather in Paris?"))
    other_conversation = await ids(user("weather in Rome?"))
    other_model = await ids(user("weather in Paris?"), model="other")
    # A later round of the same conversation: the tool results came back, the user asks again.
    later_round = await ids(
        [
            *user("weather in Paris?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": first[0],
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": first[0], "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "And the weather tomorrow?"},
        ]
    )
    assert first == retry
    assert len(set(first)) == 2 and all(i.startswith("call_") for i in first)
    for different in (other_conversation, other_model, later_round):
        assert len(different) == 2 and not set(different) & set(first)


# ---- placeholders / rule conditions -----------------------------------------------------------


async def test_rule_placeholders(client: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        *user("weather for my trip"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"c{i}",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
                for i in range(2)
            ],
        },
        {"role": "tool", "tool_call_id": "c0", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "rain"}]},
    ]
    resp = await client.chat.completions.create(model="m", messages=messages)
    assert resp.choices[0].message.content == (
        'Results: {"temp": 21}; rain | second=rain | missing=[] | '
        "asked=weather for my trip | {literal}"
    )


def _request(
    *messages: Message, model: str = "m", tools: tuple[str, ...] = ()
) -> NormalizedRequest:
    return NormalizedRequest(model=model, messages=messages, tools=tools)


def test_when_conditions() -> None:
    call = ToolCallRef(id="c1", name="get_weather", arguments="{}")
    req = _request(
        Message("system", "You are the Oracle"),
        Message("user", "first question"),
        Message("assistant", "answer"),
        Message("user", "What is the Weather today?"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "sunny and 20C", tool_call_id="c1"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "still sunny", tool_call_id="c1"),
        tools=("get_weather",),
    )
    holds = [
        When(),
        When(last_role="tool"),
        When(last_user_contains="weather TODAY"),
        When(last_user_regex=r"^what\s+is.*today\?$"),
        When(any_message_contains="oracle"),
        When(tool_result_count=2),
        When(tool_results_contain="20c"),
        When(assistant_turns_since_user=2),
        When(model="m"),
        When(has_tools=True),
        When(last_role="tool", tool_result_count=2, assistant_turns_since_user=2),
    ]
    fails = [
        When(last_role="user"),
        When(last_user_contains="first question"),  # only the *last* user message counts
        When(last_user_regex=r"^weather"),
        When(any_message_contains="nowhere"),
        When(tool_result_count=1),
        When(tool_results_contain="cloudy"),
        When(assistant_turns_since_user=1),
        When(model="other"),
        When(has_tools=False),
        When(last_role="tool", tool_result_count=3),
    ]
    assert [w.matches(req) for w in holds] == [True] * len(holds)
    assert [w.matches(req) for w in fails] == [False] * len(fails)


def test_rules_first_match_and_stateless() -> None:
    runner = ScriptRunner(
        Script.model_validate(
            {
                "rules": [
                    {"name": "tools", "when": {"last_role": "tool"}, "reply": {"text": "T"}},
                    {"reply": {"text": "any"}},
                ]
            }
        )
    )
    req = _request(Message("user", "hi"))
    plans = [runner.plan(req) for _ in range(3)]
    assert {p.rule_name for p in plans} == {"rules[1]"}
    assert {p.reply.text for p in plans if p.reply} == {"any"}
    assert runner.plan(_request(Message("user", "x"), Message("tool", "r"))).rule_name == "tools"


def test_script_validation_errors() -> None:
    bad_scripts: list[Any] = [
        {"rules": [{"reply": {"text": "{unknown_placeholder}"}}]},
        {"rules": [{"reply": {}}]},
        {"rules": [{"reply": {"text": "x"}, "faults": [{"status": 500, "cut_after_chunks": 1}]}]},
        {"rules": [{"reply": {"text": "x"}, "faults": [{}]}]},
        {"rules": [{"reply": {"text": "x"}, "faults": [{"delay": 1, "retry_after": 2}]}]},
        {"rules": [{"reply": {"text": "x"}, "whenn": {}}]},
        {"rules": [{"when": {"last_user_regex": "("}, "reply": {"text": "x"}}]},
        {
            "rules": [
                {"reply": {"tool_calls": [{"name": "f", "arguments": {}, "raw_arguments": ""}]}}
            ]
        },
    ]
    for bad in bad_scripts:
        with pytest.raises(ValidationError):
            Script.model_validate(bad)
    # JSON-looking text is not a placeholder and stays literal.
    ok = Script.model_validate({"rules": [{"reply": {"text": 'json: {"a": 1}'}}]})
    assert ok.rules[0].reply.text == 'json: {"a": 1}'


async def test_no_rule_matched_is_400(server: ScriptedModelServer) -> None:
    base = server.add_script({"rules": [{"when": {"last_role": "tool"}, "reply": {"text": "x"}}]})
    async with openai.AsyncOpenAI(base_url=base, api_key="k", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as err:
            await c.chat.completions.create(model="m", messages=user("unmatched question"))
    assert err.value.status_code == 400
    assert err.value.code == "no_rule_matched"
    assert "unmatched question" in err.value.message


# ---- faults ------------------------------------------------------------------------------------


async def test_rate_limit_then_success(
    client: openai.AsyncOpenAI, server: ScriptedModelServer
) -> None:
    messages = user("ratelimit test")
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(model="m", messages=messages)
    resp = err.value.response
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "0.2"
    assert resp.json()["error"]["message"] == "slow down"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"

    ok = await client.chat.completions.create(model="m", messages=messages)
    assert ok.choices[0].message.content == "finally through"

    # Another conversation has its own fault sequence.
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="m", messages=user("ratelimit again"))

    # retry-after-ms, and the SDK's own retry honouring it.
    with pytest.raises(openai.RateLimitError) as err_ms:
        await client.chat.completions.create(model="m", messages=user("ms-limit 1"))
    assert err_ms.value.response.headers["retry-after-ms"] == "150"
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=2) as retrying:
        started = time.monotonic()
        ok2 = await retrying.chat.completions.create(model="m", messages=user("ms-limit 2"))
        assert time.monotonic() - started >= 0.14
    assert ok2.choices[0].message.content == "through after ms"
    faults = [r.fault for r in server.requests() if r.rule == "rate-limited"]
    assert faults == [
        "faults[0]: status=429 retry_after=0.2",
        None,
        "faults[0]: status=429 retry_after=0.2",
    ]


async def test_server_error_then_success(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        await client.chat.completions.create(model="m", messages=user("flaky call"))
    assert err.value.status_code == 500
    assert err.value.response.json()["error"]["type"] == "server_error"
    ok = await client.chat.completions.create(model="m", messages=user("flaky call"), stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in ok if c.choices])
    assert text == "recovered"


async def test_error_reply_always_errors(client: openai.AsyncOpenAI) -> None:
    for _ in range(2):
        with pytest.raises(openai.PermissionDeniedError) as err:
            await client.chat.completions.create(model="m", messages=user("forbidden"))
        assert err.value.code == "no_access"
        assert err.value.response.json()["error"]["message"] == "nope"


async def test_delay_fault(client: openai.AsyncOpenAI, server: ScriptedModelServer) -> None:
    started = time.monotonic()
    first = await client.chat.completions.create(model="m", messages=user("slow start"))
    assert time.monotonic() - started >= 0.5
    assert first.choices[0].message.content == "worth the wait"
    await client.chat.completions.create(model="m", messages=user("slow start"))
    # The second request of the conversation is not delayed (no fault was applied to it).
    assert [r.fault for r in server.requests()] == ["faults[0]: delay=0.5", None]


async def test_cut_stream_raises_in_client(
    client: openai.AsyncOpenAI, server: ScriptedModelServer
) -> None:
    received: list[ChatCompletionChunk] = []
    stream = await client.chat.completions.create(model="m", messages=user("cut me"), stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 3  # role chunk + two 5-character pieces
    assert "".join(c.choices[0].delta.content or "" for c in received) == STORY[:10]
    assert server.requests()[-1].outcome == "cut"

    # The retry of the same conversation goes through, on the same client.
    again = await client.chat.completions.create(model="m", messages=user("cut me"), stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in again if c.choices]) == STORY
    assert server.requests()[-1].outcome == "completed"


async def test_stall_then_client_cancel(
    client: openai.AsyncOpenAI, server: ScriptedModelServer
) -> None:
    got_two = asyncio.Event()

    async def consume() -> None:
        stream = await client.chat.completions.create(
            model="m", messages=user("stall please"), stream=True
        )
        count = 0
        async for _ in stream:
            count += 1
            if count == 2:
                got_two.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_two.wait(), 3)
    await asyncio.sleep(0.05)
    assert not task.done()  # the server is stalling, not finishing
    assert server.requests()[-1].outcome == "pending"
    assert server.requests()[-1].finished_at is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: server.requests()[-1].outcome == "client_disconnected")

    # Closing the stream explicitly (instead of cancelling) is noticed too.
    stream = await client.chat.completions.create(
        model="m", messages=user("stall please"), stream=True
    )
    n = 0
    async for _ in stream:
        n += 1
        if n == 2:
            break
    closed_at = time.time()
    await stream.close()
    await wait_for(lambda: server.requests()[-1].outcome == "client_disconnected")
    # The server notes when it noticed, which is after the client hung up.
    noticed = server.requests()[-1].finished_at
    assert noticed is not None and noticed >= closed_at

    # The server is healthy afterwards; the third attempt of the conversation is not faulted.
    final = await client.chat.completions.create(model="m", messages=user("stall please"))
    assert final.choices[0].message.content == STORY
    assert [r.outcome for r in server.requests()] == [
        "client_disconnected",
        "client_disconnected",
        "completed",
    ]
    assert all(
        r.finished_at is not None and r.finished_at >= r.received_at for r in server.requests()
    )


# ---- auth, scripts, recording, concurrency ----------------------------------------------------------


async def test_require_api_key() -> None:
    async with ScriptedModelServer(BASE_SCRIPT, require_api_key="sekrit") as srv:
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError) as err:
                await c.chat.completions.create(model="m", messages=user("hi"))
        assert err.value.status_code == 401
        assert err.value.code == "invalid_api_key"
        assert "sekrit" not in err.value.response.text
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="sekrit", max_retries=0) as c:
            ok = await c.chat.completions.create(model="m", messages=user("hi"))
        assert ok.choices[0].message.content == "Hello! You said: hi"
        assert [r.status for r in srv.requests()] == [401, 200]
        assert all(r.headers["authorization"] == "<redacted>" for r in srv.requests())


async def test_multiple_scripts(server: ScriptedModelServer) -> None:
    base_b = server.add_script(
        {"models": ["model-b"], "rules": [{"reply": {"text": "script B: {last_user}"}}]}
    )
    assert base_b.startswith(server.url + "/s/") and base_b.endswith("/v1")

    async with httpx.AsyncClient(base_url=server.url) as http:
        posted = await http.post(
            "/_scripts", json={"rules": [{"reply": {"text": "script C: {last_user}"}}]}
        )
        assert posted.status_code == 200
        script_c = posted.json()
        assert script_c["base_url"] == f"{server.url}/s/{script_c['id']}/v1"
        invalid = await http.post("/_scripts", json={"rules": [{"reply": {}}]})
        assert invalid.status_code == 400
        health = (await http.get("/_health")).json()
        assert health["status"] == "ok" and script_c["id"] in health["scripts"]

    async def ask(base: str) -> str:
        async with openai.AsyncOpenAI(base_url=base, api_key="k", max_retries=0) as c:
            r = await c.chat.completions.create(model="m", messages=user("ping"))
            return r.choices[0].message.content or ""

    assert await ask(server.base_url) == "Hello! You said: ping"
    assert await ask(base_b) == "script B: ping"
    assert await ask(script_c["base_url"]) == "script C: ping"
    with pytest.raises(openai.NotFoundError):
        await ask(f"{server.url}/s/nope/v1")

    async with openai.AsyncOpenAI(base_url=base_b, api_key="k") as c:
        assert [m.id for m in (await c.models.list()).data] == ["model-b"]
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k") as c:
        assert [m.id for m in (await c.models.list()).data] == ["scripted"]

    assert [r.path for r in server.requests(base_b)] == [
        "/s/s1/v1/chat/completions",
        "/s/s1/v1/models",
    ]
    assert len(server.requests(script_c["id"])) == 1
    assert len(server.requests("default")) == 2
    assert len(server.requests(server.base_url)) == 2


async def test_recorded_requests(client: openai.AsyncOpenAI, server: ScriptedModelServer) -> None:
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(
            model="gpt-rec", messages=user("ratelimit rec"), extra_headers={"X-Custom": "Val"}
        )
    await client.chat.completions.create(model="gpt-rec", messages=user("ratelimit rec"))

    recs = server.requests()
    assert len(recs) == 2
    first, second = recs
    assert first.script_id == "default" and first.method == "POST"
    assert first.path == "/v1/chat/completions"
    assert first.headers["x-custom"] == "Val"
    assert first.headers["authorization"] == "<redacted>"
    assert first.body["model"] == "gpt-rec"
    assert first.body["messages"][-1] == {"role": "user", "content": "ratelimit rec"}
    assert (first.rule, first.status, first.outcome) == ("rate-limited", 429, "error")
    assert first.fault is not None and "status=429" in first.fault
    assert (second.rule, second.fault, second.status, second.outcome) == (
        "rate-limited",
        None,
        200,
        "completed",
    )

    async with httpx.AsyncClient(base_url=server.url) as http:
        listed = (await http.get("/_requests", params={"script": "default"})).json()
        assert [r["rule"] for r in listed] == ["rate-limited", "rate-limited"]
        assert listed[0]["headers"]["authorization"] == "<redacted>"
        assert (await http.get("/_requests", params={"script": "missing"})).status_code == 404
    server.clear_requests()
    assert server.requests() == []


async def test_concurrent_streams(client: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> str:
        stream = await client.chat.completions.create(
            model="m",
            messages=user(f"client {i}"),
            stream=True,
            stream_options={"include_usage": True},
        )
        parts: list[str] = []
        async for c in stream:
            if c.choices and c.choices[0].delta.content:
                parts.append(c.choices[0].delta.content)
        return "".join(parts)

    results = await asyncio.gather(*(one(i) for i in range(60)))
    assert results == [f"echo: client {i}" for i in range(60)]


async def test_keep_alive_and_chunked_framing(server: ScriptedModelServer) -> None:
    """Two requests on one raw connection: a streamed response must not end the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = json.dumps({"model": "m", "messages": user("raw"), "stream": True}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body)
    await writer.drain()
    resp_head = await reader.readuntil(b"\r\n\r\n")
    assert resp_head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in resp_head.lower()
    payload = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        if size == 0:
            await reader.readexactly(2)
            break
        payload += await reader.readexactly(size)
        await reader.readexactly(2)
    events = [e for e in payload.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"

    # Same socket, chunked *request* body this time.
    body2 = b'{"model": "m", "messages": [{"role": "user", "content": "again"}]}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body2), body2)
    )
    await writer.drain()
    head2 = await reader.readuntil(b"\r\n\r\n")
    assert head2.startswith(b"HTTP/1.1 200")
    length = next(
        int(line.split(b":")[1])
        for line in head2.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    answer = json.loads(await reader.readexactly(length))
    assert answer["choices"][0]["message"]["content"] == "Hello! You said: again"
    writer.close()
    await writer.wait_closed()


async def test_stop_ends_stalled_stream(tmp_path: Any) -> None:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(BASE_SCRIPT))
    srv = ScriptedModelServer(str(path))  # scripts can also be given as a file path
    await srv.start()
    async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="k", max_retries=0) as c:
        stream = await c.chat.completions.create(model="m", messages=user("stall"), stream=True)
        received = 0
        with pytest.raises(openai.APIConnectionError):
            async for _ in stream:
                received += 1
                if received == 2:
                    await asyncio.wait_for(srv.stop(), 2)
    assert received == 2
    assert srv.requests()[-1].outcome == "cancelled"


def test_start_in_thread_with_sync_client() -> None:
    srv = ScriptedModelServer(BASE_SCRIPT)
    base = srv.start_in_thread()
    try:
        with openai.OpenAI(base_url=base, api_key="k", max_retries=0) as c:
            out = c.chat.completions.create(model="m", messages=user("from a thread"))
        assert out.choices[0].message.content == "Hello! You said: from a thread"
        assert len(srv.requests()) == 1
    finally:
        srv.stop_thread()
    with pytest.raises(openai.APIConnectionError):
        with openai.OpenAI(base_url=base, api_key="k", max_retries=0, timeout=2) as c:
            c.chat.completions.create(model="m", messages=user("after stop"))


# ---- the demo script -------------------------------------------------------------------------------


async def test_demo_script_conversation() -> None:
    tool_results = {
        ("get_weather", "Paris"): '{"city": "Paris", "temp_c": 18}',
        ("get_weather", "Berlin"): '{"city": "Berlin", "temp_c": 12}',
        ("calculate", None): '{"result": 87}',
        ("current_time", None): '{"timezone": "Asia/Tokyo", "time": "21:04"}',
    }

    async with ScriptedModelServer(load_demo_script()) as srv:
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="k", max_retries=0) as c:
            history: list[Any] = [{"role": "system", "content": "You are a demo agent."}]

            async def turn(question: str) -> tuple[list[tuple[str, dict[str, Any]]], str]:
                history.append({"role": "user", "content": question})
                called: list[tuple[str, dict[str, Any]]] = []
                while True:
                    r = await c.chat.completions.create(model="scripted", messages=history)
                    msg = r.choices[0].message
                    if not msg.tool_calls:
                        history.append({"role": "assistant", "content": msg.content})
                        return called, msg.content or ""
                    history.append(msg.model_dump(exclude_none=True))
                    for tc in function_calls(msg.tool_calls):
                        args = json.loads(tc.function.arguments)
                        name = tc.function.name
                        called.append((name, args))
                        key = (name, args.get("city"))
                        history.append(
                            {"role": "tool", "tool_call_id": tc.id, "content": tool_results[key]}
                        )

            calls, answer = await turn("What's the weather in Paris and in Berlin?")
            assert calls == [
                ("get_weather", {"city": "Paris"}),
                ("get_weather", {"city": "Berlin"}),
            ]
            assert '"temp_c": 18' in answer and '"temp_c": 12' in answer

            calls, answer = await turn("What is (12 * 7) + 3?")
            assert calls == [("calculate", {"expression": "(12 * 7) + 3"})]
            assert '{"result": 87}' in answer

            # The story streams slowly; cancel it after a few chunks like the demo does.
            history.append({"role": "user", "content": "Tell me a long story about a lighthouse."})
            stream = await c.chat.completions.create(
                model="scripted", messages=history, stream=True
            )
            pieces: list[str] = []
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    if len(pieces) == 3:
                        break
            await stream.close()
            assert all(len(p) == 6 for p in pieces)
            await wait_for(lambda: srv.requests()[-1].outcome == "client_disconnected")
            history.append({"role": "assistant", "content": "".join(pieces)})

            calls, answer = await turn("What time is it in Tokyo?")
            assert calls == [("current_time", {"timezone": "Asia/Tokyo"})]
            assert "21:04" in answer

            _, answer = await turn("Thanks, bye!")
            assert "Thanks, bye!" in answer

        story = next(r for r in load_demo_script().rules if r.name == "lighthouse-story")
        assert story.reply.text is not None and 1300 <= len(story.reply.text) <= 1700
        assert (story.reply.chunk_size, story.reply.chunk_delay) == (6, 0.05)
