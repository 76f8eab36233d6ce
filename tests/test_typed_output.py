"""Typed output (docs/typed-output.md) on every provider, against the real dev server.

The worker calls the scripted model through each provider's official SDK over real HTTP.
The scripts answer the way a model in structured-output mode does: JSON text on the
OpenAI wires (asked for with `response_format` / `text.format`), a call of the forced
output tool on Anthropic. The tests check what went over the wire, the validated
`turn.output`, the validation retry step, and the typed error when retries run out.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field, field_validator
from temporalio.api.enums.v1 import EventType

from geppetto_temporal import (
    BlockKind,
    BudgetExceeded,
    EngineBuilder,
    ExecutionHandle,
    InferenceFailed,
    InferenceStatus,
    OutputValidationError,
)
from geppetto_temporal.contract import TYPED_OUTPUT_PATCH, InferenceRun
from geppetto_temporal.engines._output import OUTPUT_ERROR, OUTPUT_RETRY, settle_output, validate
from geppetto_temporal.events import InfoEvent
from geppetto_temporal.testing import ScriptedModelServer
from geppetto_temporal.turns import PayloadKey, llm_text_block, tool_call_block
from tests.conftest import SECRET_API_KEY
from tests.test_provider_matrix import (  # the provider matrix's fixtures and cases
    ProviderCase,
    conversations,
    provider,
    provider_session,
)

__all__ = ["provider", "provider_session"]  # fixtures used by name below

pytestmark = pytest.mark.timeout(60)


class Forecast(BaseModel):
    """A weather forecast for one city."""

    city: str
    temp_c: float
    sky: Literal["sunny", "cloudy", "rain"]
    tags: list[str] = Field(default_factory=list)


GOOD = {"city": "Paris", "temp_c": 21.5, "sky": "sunny", "tags": ["warm"]}
BAD = {"city": "Paris", "temp_c": "warm", "sky": "sunny"}
RETRY_MARK = "did not match the required JSON schema"


async def typed_output_markers(handle: ExecutionHandle) -> int:
    """How many `typed-output` patch markers the inference's history holds."""
    markers = 0
    async for event in handle.workflow_handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            details = event.marker_recorded_event_attributes.details
            data = b"".join(p.data for p in details["patch-data"].payloads)
            markers += TYPED_OUTPUT_PATCH.encode() in data
    return markers


def answer(case: ProviderCase, value: dict[str, Any], name: str = "Forecast") -> dict[str, Any]:
    """A reply that gives `value` as the structured answer, in the provider's way."""
    if case.prefix == "anthropic":
        return {"tool_calls": [{"name": name, "arguments": value}]}
    return {"text": json.dumps(value)}


def bodies(server: ScriptedModelServer, base_url: str) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = [r.body for r in server.requests(base_url)]
    return bodies


def assert_asked_natively(case: ProviderCase, body: dict[str, Any], *, tools: bool) -> None:
    """The request used the provider's native structured output with Forecast's schema."""
    schema = Forecast.model_json_schema()
    if case.prefix == "openai":
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {
                "name": "Forecast",
                "schema": schema,
                "strict": False,
                "description": "A weather forecast for one city.",
            },
        }
    elif case.prefix == "openai-responses":
        fmt = body["text"]["format"]
        assert (fmt["type"], fmt["name"], fmt["schema"]) == ("json_schema", "Forecast", schema)
    else:
        output_tool = body["tools"][-1]
        assert (output_tool["name"], output_tool["input_schema"]) == ("Forecast", schema)
        if tools:
            assert body["tool_choice"] == {"type": "any"}
            assert "get_weather" in [t["name"] for t in body["tools"]]
        else:
            assert body["tool_choice"] == {"type": "tool", "name": "Forecast"}
            assert len(body["tools"]) == 1


async def test_typed_output(
    provider_session: Any, provider: ProviderCase, model_server: ScriptedModelServer
) -> None:
    script = {"rules": [{"name": "answer", "reply": answer(provider, GOOD)}]}
    session, base_url = await provider_session(
        script, configure=lambda b: b.no_tools().output_type(Forecast)
    )
    handle = await session.start_inference("Weather in Paris?")
    turn = await handle.wait()
    assert turn.output == Forecast(**GOOD)
    assert json.loads(turn.last_text) == GOOD  # what history holds: JSON
    assert await typed_output_markers(handle) == 0  # a valid answer takes the old path
    assert [b.kind for b in turn.blocks] == [BlockKind.USER, BlockKind.LLM_TEXT]
    [body] = bodies(model_server, base_url)
    assert_asked_natively(provider, body, tools=False)
    # The session's record of the turn is the same JSON; the engine carries only the schema.
    [recorded] = await session.turns()
    assert recorded.last_text == turn.last_text and recorded.output is None
    engine = await session.engine()
    assert engine.output is not None and engine.output.json_schema == Forecast.model_json_schema()


async def test_validation_retry_succeeds(
    provider_session: Any, provider: ProviderCase, model_server: ScriptedModelServer
) -> None:
    script = {
        "rules": [
            {
                "name": "fixed",
                "when": {"last_user_contains": RETRY_MARK},
                "reply": answer(provider, GOOD),
            },
            {"name": "wrong", "reply": answer(provider, BAD)},
        ]
    }
    session, base_url = await provider_session(
        script, configure=lambda b: b.no_tools().output_type(Forecast)
    )
    handle = await session.start_inference("Weather in Paris?")
    turn = await handle.wait()
    assert turn.output == Forecast(**GOOD)
    assert turn.metadata.status == InferenceStatus.COMPLETED
    retried = [e async for e in handle.events() if isinstance(e, InfoEvent)]
    assert [(e.message, e.data) for e in retried] == [
        ("output-retry", {"problem": '$.temp_c: expected number, got "warm"', "retry": 1})
    ]
    assert await typed_output_markers(handle) == 1
    _user, wrong, retry, fixed = turn.blocks
    assert [b.kind for b in turn.blocks] == [
        BlockKind.USER,
        BlockKind.LLM_TEXT,
        BlockKind.USER,
        BlockKind.LLM_TEXT,
    ]
    assert json.loads(wrong.text) == BAD
    assert wrong.metadata[OUTPUT_ERROR] == '$.temp_c: expected number, got "warm"'
    assert retry.metadata[OUTPUT_RETRY] is True
    assert json.loads(fixed.text) == GOOD and OUTPUT_ERROR not in fixed.metadata
    # The model was told what was wrong, as a new step in the same inference.
    first, second = conversations(model_server, base_url)
    assert second.messages[-1].role == "user"
    assert '$.temp_c: expected number, got "warm"' in second.messages[-1].text
    assert len(second.messages) == len(first.messages) + 2


async def test_validation_retries_run_out(
    provider_session: Any, provider: ProviderCase, model_server: ScriptedModelServer
) -> None:
    never = {"city": "Paris", "sky": "snow"}
    script = {
        "rules": [
            {
                "name": "never",
                "when": {"last_user_regex": f"forecast|{RETRY_MARK}"},
                "reply": answer(provider, never),
            },
            {"name": "plain", "reply": {"text": "plain text"}},
        ]
    }
    # No typed output on the engine: this prompt alone asks for it.
    session, base_url = await provider_session(
        script, configure=lambda b: b.no_tools().output_type(None)
    )
    assert (await session.engine()).output is None
    handle = await session.start_inference("A forecast, please", output_type=Forecast)
    with pytest.raises(OutputValidationError) as caught:
        await handle.wait()
    err = caught.value
    assert isinstance(err, InferenceFailed)
    assert json.loads(err.raw) == never
    assert "missing required field 'temp_c'" in err.problem
    assert "'snow' is not one of" in err.problem or '"snow" is not one of' in err.problem
    assert err.turn is not None and err.turn.metadata.status == InferenceStatus.FAILED
    # The default two retries: three answers, each with its reason, then the error.
    wrong = [b for b in err.turn.blocks if b.kind == BlockKind.LLM_TEXT]
    assert len(wrong) == 3 and all(OUTPUT_ERROR in b.metadata for b in wrong)
    assert len(model_server.requests(base_url)) == 3
    assert_asked_natively(provider, bodies(model_server, base_url)[0], tools=False)
    # The session is unharmed, and the next prompt is free text again.
    turn = await (await session.start_inference("Say something")).wait()
    assert turn.last_text == "plain text" and turn.output is None
    last = bodies(model_server, base_url)[-1]
    assert "response_format" not in last and "format" not in last.get("text", {})
    assert "tool_choice" not in last


async def test_typed_output_after_tool_call(
    provider_session: Any, provider: ProviderCase, model_server: ScriptedModelServer
) -> None:
    script = {
        "rules": [
            {
                "name": "call",
                "when": {"last_role": "user"},
                "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
            },
            {"name": "answer", "when": {"last_role": "tool"}, "reply": answer(provider, GOOD)},
        ]
    }
    session, base_url = await provider_session(
        script, configure=lambda b: b.tools("get_weather").output_type(Forecast, retries=0)
    )
    turn = await (await session.start_inference("Weather in Paris?")).wait()
    assert turn.output == Forecast(**GOOD)
    assert [b.kind for b in turn.blocks] == [
        BlockKind.USER,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_USE,
        BlockKind.LLM_TEXT,
    ]
    assert turn.blocks[2].payload[PayloadKey.RESULT]["city"] == "Paris"
    first, second = bodies(model_server, base_url)
    for body in (first, second):
        assert_asked_natively(provider, body, tools=True)


async def test_budget_stops_retries(new_session: Any, model_server: ScriptedModelServer) -> None:
    script = {"rules": [{"name": "wrong", "reply": {"text": json.dumps(BAD)}}]}
    session, base_url = await new_session(
        script, configure=lambda b: b.no_tools().budget(max_total_tokens=1).output_type(Forecast)
    )
    with pytest.raises(BudgetExceeded, match="max_total_tokens is 1"):
        await (await session.start_inference("Weather in Paris?")).wait()
    assert len(model_server.requests(base_url)) == 1  # no retry step past the budget


class Strict(BaseModel):
    """Passes the JSON schema, not the client's own validator."""

    word: str

    @field_validator("word")
    @classmethod
    def _lowercase(cls, value: str) -> str:
        if value != value.lower():
            raise ValueError("must be lowercase")
        return value


async def test_client_validation_error(new_session: Any, model_server: ScriptedModelServer) -> None:
    script = {"rules": [{"name": "answer", "reply": {"text": '{"word": "LOUD"}'}}]}
    session, _ = await new_session(script, configure=lambda b: b.no_tools().output_type(Strict))
    with pytest.raises(OutputValidationError) as caught:
        await (await session.start_inference("A word")).wait()
    assert caught.value.raw == '{"word": "LOUD"}'
    assert "must be lowercase" in caught.value.problem
    # The worker's schema check passed, so the inference itself completed.
    assert caught.value.turn is not None
    assert caught.value.turn.metadata.status == InferenceStatus.COMPLETED


def test_schema_check_covers_what_pydantic_emits() -> None:
    class Point(BaseModel):
        x: int = Field(ge=0)
        label: str | None = Field(default=None, max_length=3)

    class Shape(BaseModel):
        kind: Literal["line", "polygon"]
        points: list[Point] = Field(min_length=1)
        meta: dict[str, int] = Field(default_factory=dict)

    schema = Shape.model_json_schema()
    assert validate({"kind": "line", "points": [{"x": 1}, {"x": 2, "label": "a"}]}, schema) == []
    assert validate(
        {"kind": "arc", "points": [{"x": -1, "label": "long"}, {"x": 1.5}], "meta": {"a": "b"}},
        schema,
    ) == [
        "$.kind: \"arc\" is not one of ['line', 'polygon']",
        "$.points[0].x: -1 violates minimum 0",
        '$.points[0].label: "long" matches none of the allowed shapes',
        "$.points[1].x: expected integer, got 1.5",
        '$.meta.a: expected integer, got "b"',
    ]
    assert validate({"points": []}, schema) == [
        "$: missing required field 'kind'",
        "$.points: fewer than 1 items",
    ]
    # A whole number written as a float is a JSON integer; a boolean is not a number.
    assert validate({"kind": "line", "points": [{"x": 2.0}]}, schema) == []
    assert validate(True, {"type": "number"}) == ["$: expected number, got true"]


def test_output_type_needs_a_pydantic_model() -> None:
    from geppetto_temporal import ConfigurationError

    with pytest.raises(ConfigurationError, match="pydantic model class"):
        EngineBuilder("openai:m").output_type(dict)  # type: ignore[arg-type]
    spec = EngineBuilder("openai:m").output_type(Forecast, retries=5).build()
    assert spec.output is not None and spec.output.retries == 5
    # Only JSON travels: the spec round-trips through JSON with the schema intact.
    assert type(spec).model_validate_json(spec.model_dump_json()) == spec


async def test_retry_count_survives_continue_as_new(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    """A retry, then a tool step after which the inference continues as new, then a bad
    answer: the new run knows the one retry is spent and fails at once."""
    script = {
        "rules": [
            {
                "name": "after-tool",
                "when": {"last_role": "tool"},
                "reply": {"text": json.dumps(BAD)},
            },
            {
                "name": "call",
                "when": {"last_user_contains": RETRY_MARK},
                "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
            },
            {"name": "first", "reply": {"text": json.dumps(BAD)}},
        ]
    }
    session, base_url = await new_session(
        script,
        configure=lambda b: (
            b.tools("get_weather").steps_per_run(1).output_type(Forecast, retries=1)
        ),
    )
    handle = await session.start_inference("Weather in Paris?")
    with pytest.raises(OutputValidationError) as caught:
        await handle.wait()
    assert "after 1 of 1 retries, step 3" in caught.value.problem
    assert json.loads(caught.value.raw) == BAD
    turn = caught.value.turn
    assert turn is not None
    assert [b.kind for b in turn.blocks] == [
        BlockKind.USER,
        BlockKind.LLM_TEXT,
        BlockKind.USER,
        BlockKind.TOOL_CALL,
        BlockKind.TOOL_USE,
        BlockKind.LLM_TEXT,
    ]
    assert len(model_server.requests(base_url)) == 3
    runs = await handle.workflow_handle.query("runs", result_type=list[InferenceRun])
    assert len(runs) == 1  # the last answer came in a second run


async def test_scripted_server_checks_structured_output_requests(
    model_server: ScriptedModelServer,
) -> None:
    """The scripted server rejects malformed structured-output requests as the APIs do (400),
    and the Responses wire echoes the requested format."""
    import anthropic
    import openai

    base_url = model_server.add_script({"rules": [{"reply": {"text": '{"ok": true}'}}]})
    chat = openai.AsyncOpenAI(api_key=SECRET_API_KEY, base_url=base_url, max_retries=0)
    claude = anthropic.AsyncAnthropic(
        api_key=SECRET_API_KEY, base_url=base_url.removesuffix("/v1"), max_retries=0
    )
    messages: Any = [{"role": "user", "content": "hi"}]
    schema: Any = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    bad_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "bad name!", "schema": schema},
    }
    text_format: Any = {"format": {"type": "json_schema", "name": "Ok", "schema": schema}}
    tools: Any = [{"name": "Ok", "input_schema": schema}]
    try:
        with pytest.raises(openai.BadRequestError, match=r"json_schema\.name"):
            await chat.chat.completions.create(
                model="m",
                messages=messages,
                response_format=bad_format,
            )
        response = await chat.responses.create(
            model="m",
            input="hi",
            text=text_format,
        )
        assert response.text is not None and response.text.format is not None
        assert response.text.format.type == "json_schema"
        assert json.loads(response.output_text) == {"ok": True}
        with pytest.raises(anthropic.BadRequestError, match="not one of the request's tools"):
            await claude.messages.create(
                model="m",
                max_tokens=100,
                messages=messages,
                tools=tools,
                tool_choice={"type": "tool", "name": "Other"},
            )
    finally:
        await chat.close()
        await claude.close()


def test_settle_output_on_anthropic_shaped_steps() -> None:
    """How a step's output tool call becomes the answer (or does not)."""
    output = EngineBuilder("anthropic:m").output_type(Forecast).build().output
    assert output is not None
    # A preamble and the output tool's call: the call's input is the answer, after the text.
    blocks, error = settle_output(
        [llm_text_block("Here it is."), tool_call_block("c1", "Forecast", GOOD)], output
    )
    assert error is None
    assert [(b.kind, b.text) for b in blocks] == [
        (BlockKind.LLM_TEXT, "Here it is."),
        (BlockKind.LLM_TEXT, json.dumps(GOOD)),
    ]
    # Beside another tool's call, the output call is dropped: the tool runs, the model answers again.
    weather = tool_call_block("c2", "get_weather", {"city": "Paris"})
    blocks, error = settle_output([weather, tool_call_block("c3", "Forecast", BAD)], output)
    assert (blocks, error) == ([weather], None)
    # A wrong answer is kept, marked with the reason.
    blocks, error = settle_output([tool_call_block("c4", "Forecast", BAD)], output)
    assert error == '$.temp_c: expected number, got "warm"'
    assert blocks[0].metadata[OUTPUT_ERROR] == error
    # No answer at all.
    assert settle_output([], output) == ([], "the answer was empty")
