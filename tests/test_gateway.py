"""The web gateway over real HTTP: two app instances (uvicorn) against the test dev server and worker.

Every request goes through the network; the second instance stands for another replica
(it shares nothing with the first but Temporal), so resuming a stream on it proves the
ids are replica-independent.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import pytest
from ag_ui.core import Event as AgUiEvent
from pydantic import BaseModel, ConfigDict, TypeAdapter
from temporalio.client import Client

from geppetto_temporal.gateway import create_app
from geppetto_temporal.testing import ScriptedModelServer
from tests.conftest import TASK_QUEUE
from tests.gateway_http import Frame, engine_json, frames, serve

TOKEN = "gateway-test-token"
#: 204 characters, 4 every 0.05 s: about 2.5 s of streaming.
STORY = "Once upon a time " * 12
SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "name": "story",
            "when": {"last_user_contains": "story"},
            "reply": {"text": STORY, "chunk_size": 4, "chunk_delay": 0.05},
        },
        {
            "name": "weather",
            "when": {"last_user_contains": "weather", "last_role": "user"},
            "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]},
        },
        {
            "name": "after-tool",
            "when": {"last_role": "tool"},
            "reply": {"text": "It is {tool_results}"},
        },
        {"name": "echo", "reply": {"text": "You said: {last_user}"}},
    ]
}
#: A small keep-alive interval, so the tests see the comments.
KEEPALIVE = 0.3


class Gateways:
    """Two replicas of the gateway (A and B), one with a token (T), and the engine to use."""

    def __init__(self, a: str, b: str, t: str, engine: dict[str, Any]) -> None:
        self.a, self.b, self.t, self.engine = a, b, t, engine
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60.0))

    async def session(self, base: str | None = None) -> str:
        response = await self.http.post(
            f"{base or self.a}/v1/sessions", json={"engine": self.engine}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["session_id"])

    async def prompt(
        self, session_id: str, prompt: str, *, base: str | None = None, **params: str
    ) -> httpx.Response:
        return await self.http.post(
            f"{base or self.a}/v1/sessions/{session_id}/prompts",
            json={"prompt": prompt},
            params=params,
        )


@pytest.fixture(scope="module")
async def gw(
    client: Client, worker: Any, model_server: ScriptedModelServer
) -> AsyncIterator[Gateways]:
    base_url = model_server.add_script(SCRIPT)
    # Durable text batches every 0.5 s: a stream mixes durable and live partials.
    engine = engine_json(base_url, durable_batch_seconds=0.5)
    options: dict[str, Any] = dict(
        task_queue=TASK_QUEUE, keepalive=KEEPALIVE, max_body_bytes=16_384
    )
    async with (
        serve(create_app(client, **options)) as a,
        serve(create_app(client, **options)) as b,
        serve(create_app(client, token=TOKEN, **options), host="0.0.0.0") as t,
    ):
        gateways = Gateways(a, b, t, engine)
        try:
            yield gateways
        finally:
            await gateways.http.aclose()


async def _collect(
    http: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    until_text: int | None = None,
) -> tuple[httpx.Response, list[Frame]]:
    """The frames of a stream, to its end, or (with `until_text`) until that much text came."""
    got: list[Frame] = []
    text = 0
    async with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for frame in frames(response):
            got.append(frame)
            if until_text is not None and frame.data and frame.data != "[DONE]":
                data = frame.json()
                text += (
                    len(data.get("delta", ""))
                    if data.get("type") in ("partial", "text-delta")
                    else 0
                )
                if text >= until_text:
                    break
    return response, got


def _events(got: list[Frame]) -> list[tuple[str, dict[str, Any]]]:
    return [(f.id or "", f.json()) for f in got if f.comment is None and f.data]


def _text(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(e["delta"] for _, e in events if e["type"] == "partial")


def _durable_seqs(events: list[tuple[str, dict[str, Any]]]) -> list[int]:
    return [e["meta"]["seq"] for _, e in events if not e["meta"].get("live")]


async def test_create_prompt_and_stream_to_the_end(gw: Gateways) -> None:
    session_id = await gw.session()
    started = await gw.prompt(session_id, "tell a story")
    assert started.status_code == 201, started.text
    body = started.json()
    assert body["status"] == "started" and body["number"] == 1
    assert started.headers["location"] == f"/v1/sessions/{session_id}/inferences/1"

    response, got = await _collect(gw.http, gw.a + body["links"]["events"])
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(got)
    # Every event has an id; the durable ones are the stream's offsets, each once, in order.
    assert all(ident for ident, _ in events)
    assert _durable_seqs(events) == list(range(len(_durable_seqs(events))))
    assert _text(events) == STORY
    assert events[-1][1]["type"] == "inference-finished"
    assert events[-1][1]["status"] == "completed"
    assert any(e["meta"].get("live") for _, e in events), "no live delta reached the stream"

    turn = await gw.http.get(gw.b + body["links"]["turn"])
    assert turn.status_code == 200, turn.text
    assert any(
        b["kind"] == "llm_text" and b["payload"]["text"] == STORY for b in turn.json()["blocks"]
    )
    info = await gw.http.get(f"{gw.b}/v1/sessions/{session_id}")
    assert info.json()["session_id"] == session_id and info.json()["turn_count"] == 1
    inference = await gw.http.get(gw.b + body["links"]["self"])
    assert inference.json()["running"] is False


async def test_a_stream_resumes_on_another_replica_with_exactly_the_rest(gw: Gateways) -> None:
    session_id = await gw.session()
    number = (await gw.prompt(session_id, "tell a story")).json()["number"]
    path = f"/v1/sessions/{session_id}/inferences/{number}/events"

    _, first = await _collect(gw.http, gw.a + path, until_text=len(STORY) // 2)
    head = _events(first)
    last_id = head[-1][0]
    # Replica B, resumed with the header: the rest, nothing twice, nothing missing.
    _, second = await _collect(gw.http, gw.b + path, headers={"Last-Event-ID": last_id})
    tail = _events(second)
    assert tail, "nothing after the resume point"
    assert _text(head) + _text(tail) == STORY
    seqs = _durable_seqs(head) + _durable_seqs(tail)
    assert seqs == list(range(len(seqs)))
    assert tail[-1][1]["type"] == "inference-finished"

    # Resuming from every id of a finished stream (query form) gives exactly what followed it.
    _, whole = await _collect(gw.http, gw.b + path)
    everything = _events(whole)
    assert _text(everything) == STORY
    for cut in range(0, len(everything), max(1, len(everything) // 6)):
        _, rest = await _collect(gw.http, gw.a + path + f"?last_event_id={everything[cut][0]}")
        assert _text(everything[: cut + 1]) + _text(_events(rest)) == STORY
        assert [e["type"] for _, e in _events(rest)][-1:] == (
            [] if cut == len(everything) - 1 else ["inference-finished"]
        )


async def test_busy_session_conflict_queue_and_cancel_mid_stream(gw: Gateways) -> None:
    session_id = await gw.session()
    number = (await gw.prompt(session_id, "tell a story")).json()["number"]
    path = f"{gw.a}/v1/sessions/{session_id}/inferences/{number}"
    got: list[Frame] = []
    async with gw.http.stream("GET", path + "/events") as stream:
        reading = frames(stream)
        async for frame in reading:
            got.append(frame)
            if frame.data and frame.json()["type"] == "partial":
                break
        # Busy: refused by default, queued on request.
        refused = await gw.prompt(session_id, "hello again", base=gw.b)
        assert refused.status_code == 409
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["active_inference_id"] == f"{session_id}/inference/{number}"
        queued = await gw.prompt(session_id, "hello again", base=gw.b, if_busy="queue")
        assert queued.status_code == 202, queued.text
        key = queued.json()["idempotency_key"]
        assert queued.json()["status"] == "queued"
        # Cancel mid-stream: the open stream ends with an interrupt and `cancelled`.
        cancel = await gw.http.post(path + "/cancel")
        assert cancel.status_code == 202
        async for frame in reading:
            got.append(frame)
    events = _events(got)
    types = [e["type"] for _, e in events]
    assert "interrupt" in types
    assert events[-1][1] == events[-1][1] | {"type": "inference-finished", "status": "cancelled"}
    assert len(_text(events)) < len(STORY)
    # The queued prompt runs next: its key now names inference 2.
    for _ in range(200):
        lookup = (await gw.http.get(f"{gw.b}/v1/sessions/{session_id}/prompts/{key}")).json()
        if lookup["status"] == "started":
            break
        await asyncio.sleep(0.05)
    assert lookup["number"] == number + 1
    _, after = await _collect(gw.http, gw.b + lookup["links"]["events"])
    assert _text(_events(after)) == "You said: hello again"


async def test_a_repeated_prompt_with_the_same_idempotency_key_runs_once(gw: Gateways) -> None:
    session_id = await gw.session()
    key = {"Idempotency-Key": "order-42"}
    url = f"/v1/sessions/{session_id}/prompts"
    one = await gw.http.post(gw.a + url, json={"prompt": "hi"}, headers=key)
    two = await gw.http.post(gw.b + url, json={"prompt": "hi"}, headers=key)
    assert one.status_code == two.status_code == 201, (one.text, two.text)
    assert one.json()["inference_id"] == two.json()["inference_id"]
    await _collect(gw.http, gw.a + one.json()["links"]["events"])
    # After it finished, too; and a queued-mode prompt with one key also runs once.
    three = await gw.http.post(gw.a + url, json={"prompt": "hi"}, headers=key)
    assert three.json()["inference_id"] == one.json()["inference_id"]
    queue = {"Idempotency-Key": "order-43"}
    q1 = await gw.http.post(
        gw.a + url, json={"prompt": "q"}, headers=queue, params={"if_busy": "queue"}
    )
    q2 = await gw.http.post(
        gw.b + url, json={"prompt": "q"}, headers=queue, params={"if_busy": "queue"}
    )
    assert q1.json()["inference_id"] == q2.json()["inference_id"] is not None
    await _collect(gw.http, gw.a + q1.json()["links"]["events"])
    turns = (await gw.http.get(f"{gw.a}/v1/sessions/{session_id}/turns")).json()
    assert len(turns) == 2


async def test_approvals_are_listed_and_decided_over_http(gw: Gateways) -> None:
    engine = {**gw.engine, "tools": {**gw.engine["tools"], "require_approval": ["get_*"]}}
    created = await gw.http.post(f"{gw.a}/v1/sessions", json={"engine": engine})
    session_id = created.json()["session_id"]
    links = (await gw.prompt(session_id, "weather please")).json()["links"]
    got: list[Frame] = []
    async with gw.http.stream("GET", gw.a + links["events"]) as stream:
        async for frame in frames(stream):
            got.append(frame)
            if frame.data and frame.json()["type"] == "approval-requested":
                pending = (await gw.http.get(gw.b + links["approvals"])).json()
                assert [p["tool"] for p in pending] == ["get_weather"]
                url = f"{gw.b}{links['approvals']}/{pending[0]['call_id']}"
                decided = await gw.http.post(url, json={"approve": True})
                assert decided.status_code == 200, decided.text
                again = await gw.http.post(url, json={"approve": False, "reason": "late"})
                assert again.status_code == 409
                assert again.headers["content-type"] == "application/problem+json"
    types = [e["type"] for _, e in _events(got)]
    assert types.index("approval-requested") < types.index("approval-decided")
    assert types.index("approval-decided") < types.index("tool-call-execution-result")
    assert _text(_events(got)).startswith("It is ")


# ---- formats -----------------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Start(_Part):
    type: Literal["start"]
    messageId: str | None = None


class _Step(_Part):
    type: Literal["start-step", "finish-step"]


class _TextBound(_Part):
    type: Literal["text-start", "text-end", "reasoning-start", "reasoning-end"]
    id: str


class _TextDelta(_Part):
    type: Literal["text-delta", "reasoning-delta"]
    id: str
    delta: str


class _ToolInput(_Part):
    type: Literal["tool-input-available"]
    toolCallId: str
    toolName: str
    input: Any


class _ToolOutput(_Part):
    type: Literal["tool-output-available"]
    toolCallId: str
    output: Any


class _Finish(_Part):
    type: Literal["finish"]
    messageMetadata: Any = None


#: The AI SDK UI message stream's documented part types this gateway sends (strict, as
#: the SDK's own schema is: an unknown member is an error).
AI_SDK_PART: TypeAdapter[Any] = TypeAdapter(
    _Start | _Step | _TextBound | _TextDelta | _ToolInput | _ToolOutput | _Finish
)


def _check_ai_sdk(parts: list[dict[str, Any]]) -> str:
    """Validate part types and their order; the text the message spells."""
    open_text: set[str] = set()
    tools: set[str] = set()
    text = ""
    assert parts[0]["type"] == "start" and parts[-1]["type"] == "finish"
    for part in parts:
        AI_SDK_PART.validate_python(part)
        kind = part["type"]
        if kind == "text-start":
            open_text.add(part["id"])
        elif kind == "text-delta":
            assert part["id"] in open_text, "text-delta before its text-start"
            text += part["delta"]
        elif kind == "text-end":
            open_text.remove(part["id"])
        elif kind == "tool-input-available":
            tools.add(part["toolCallId"])
        elif kind == "tool-output-available":
            assert part["toolCallId"] in tools
    assert not open_text
    return text


async def test_ai_sdk_stream_follows_the_ui_message_stream_protocol(gw: Gateways) -> None:
    session_id = await gw.session()
    number = (await gw.prompt(session_id, "what's the weather?")).json()["number"]
    url = f"{gw.a}/v1/sessions/{session_id}/inferences/{number}/events?format=ai-sdk"
    response, got = await _collect(gw.http, url)
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    data = [f.data for f in got if f.comment is None and f.data]
    assert data[-1] == "[DONE]"
    parts = [json.loads(d) for d in data[:-1]]
    assert all(f.id for f in got if f.comment is None and f.data)
    text = _check_ai_sdk(parts)
    assert text.startswith("It is ") and "Rome" in text
    assert [p["type"] for p in parts].count("tool-input-available") == 1
    # Resuming after any frame, also one of several an event became (`<id>/<k>`), gives
    # exactly the frames that followed it.
    sent = [f for f in got if f.comment is None and f.data]
    assert any("/" in (f.id or "") for f in sent)
    for i, frame in enumerate(sent):
        _, rest = await _collect(gw.http, url, headers={"Last-Event-ID": frame.id or ""})
        assert [f.data for f in rest if f.comment is None and f.data] == data[i + 1 :]

    # A story cut in the middle and resumed on replica B: the parts still make one valid message.
    session_id = await gw.session()
    number = (await gw.prompt(session_id, "a story please")).json()["number"]
    path = f"/v1/sessions/{session_id}/inferences/{number}/events?format=ai-sdk"
    _, head = await _collect(gw.http, gw.a + path, until_text=len(STORY) // 3)
    _, tail = await _collect(gw.http, gw.b + path, headers={"Last-Event-ID": head[-1].id or ""})
    data = [f.data for f in [*head, *tail] if f.comment is None and f.data]
    assert data[-1] == "[DONE]"
    assert _check_ai_sdk([json.loads(d) for d in data[:-1]]) == STORY


async def test_ag_ui_stream_validates_against_the_protocol_models(gw: Gateways) -> None:
    session_id = await gw.session()
    number = (await gw.prompt(session_id, "weather in Rome?")).json()["number"]
    url = f"{gw.b}/v1/sessions/{session_id}/inferences/{number}/events"
    _, got = await _collect(gw.http, url, headers={"Accept": "text/event-stream; profile=ag-ui"})
    assert all(f.id for f in got if f.comment is None and f.data)
    adapter: TypeAdapter[Any] = TypeAdapter(AgUiEvent)
    events = [adapter.validate_json(f.data) for f in got if f.comment is None and f.data]
    types = [e.type.value for e in events]
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"
    assert events[0].thread_id == session_id
    assert events[0].run_id == f"{session_id}/inference/{number}"
    calls = [e for e in events if e.type.value == "TOOL_CALL_START"]
    assert [c.tool_call_name for c in calls] == ["get_weather"]
    call_id = calls[0].tool_call_id
    assert (
        types.index("TOOL_CALL_START")
        < types.index("TOOL_CALL_ARGS")
        < types.index("TOOL_CALL_END")
    )
    assert any(e.type.value == "TOOL_CALL_RESULT" and e.tool_call_id == call_id for e in events)
    started = {e.message_id for e in events if e.type.value == "TEXT_MESSAGE_START"}
    text = "".join(
        e.delta
        for e in events
        if e.type.value == "TEXT_MESSAGE_CONTENT" and e.message_id in started
    )
    assert text.startswith("It is ") and "Rome" in text
    assert {e.message_id for e in events if e.type.value == "TEXT_MESSAGE_END"} == started


async def test_session_stream_follows_inferences_until_the_session_closes(gw: Gateways) -> None:
    session_id = await gw.session()
    got: list[Frame] = []
    async with gw.http.stream("GET", f"{gw.a}/v1/sessions/{session_id}/events") as stream:
        async for frame in frames(stream):
            if frame.comment == "keep-alive" and not got:
                # Idle and caught up: keep-alives flow; now send the prompt and close.
                assert (await gw.prompt(session_id, "first", base=gw.b)).status_code == 201
                got.append(frame)
                continue
            got.append(frame)
            if frame.data and frame.json()["type"] == "inference-finished":
                closed = await gw.http.post(f"{gw.b}/v1/sessions/{session_id}/close")
                assert closed.status_code == 200, closed.text
    events = _events(got)
    assert [e["type"] for _, e in events][-2:] == ["inference-finished", "session-closed"]
    assert all(ident.startswith("1:") for ident, _ in events[:-1])
    assert _text(events) == "You said: first"
    # The session stream resumes too, on the other replica.
    url = f"{gw.b}/v1/sessions/{session_id}/events"
    _, rest = await _collect(gw.http, url, headers={"Last-Event-ID": events[1][0]})
    after = _events(rest)

    def shape(evs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, Any]]:
        return [(e["type"], e.get("meta", {}).get("seq")) for _, e in evs if e["type"] != "partial"]

    assert shape(after) == shape(events[2:])
    assert _text(after) == _text(events[2:])


# ---- safety ------------------------------------------------------------------------------


async def test_token_required_off_loopback_and_problems_are_json(gw: Gateways) -> None:
    # Replica T listens on all addresses and has a token: none, or a wrong one, is refused.
    url = f"{gw.t}/v1/sessions"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = await gw.http.get(url, headers=headers)
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert "Bearer" in refused.json()["detail"]
    allowed = await gw.http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200, allowed.text
    assert (await gw.http.get(f"{gw.t}/openapi.json")).json()["info"]["title"] == "geppetto gateway"
    # Without a token, only localhost names are answered (DNS rebinding).
    rebound = await gw.http.get(f"{gw.a}/v1/sessions", headers={"Host": "evil.example"})
    assert rebound.status_code == 403

    named = {"engine": gw.engine, "session_id": f"gw-named-{uuid.uuid4().hex[:8]}"}
    assert (await gw.http.post(f"{gw.a}/v1/sessions", json=named)).status_code == 201
    problems = [
        (await gw.http.post(f"{gw.b}/v1/sessions", json=named), 409),
        (await gw.http.get(f"{gw.a}/v1/sessions/test-nosuchsession"), 404),
        (await gw.http.post(f"{gw.a}/v1/sessions/x/prompts", json={}), 422),
        (await gw.http.post(f"{gw.a}/v1/sessions", json={"engine": "nope:x"}), 422),
        (await gw.http.post(f"{gw.a}/v1/sessions", content=b"{" * 20_000), 413),
        (
            await gw.http.get(
                f"{gw.a}/v1/sessions/s/inferences/1/events", headers={"Last-Event-ID": "x"}
            ),
            400,
        ),
        (await gw.http.get(f"{gw.a}/v1/sessions/s/inferences/1/events?format=xml"), 406),
    ]
    for response, status in problems:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == status and body["detail"] and body["title"]
        assert "Traceback" not in response.text


def test_serve_refuses_a_public_address_without_a_token() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "geppetto_temporal._main", "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "token" in lines[0] and "0.0.0.0" in lines[0], result.stderr
