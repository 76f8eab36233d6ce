"""Context that fits: long sessions and tool loops against a model with a small context window.

The scripted model enforces its window like a real one (HTTP 400 `context_length_exceeded`,
or Anthropic's "prompt is too long"); the LLM activity compacts what it sends, and the
session keeps every block.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import anthropic
import openai
import pytest
from rich.console import Console
from temporalio.client import Client
from temporalio.worker import Replayer

from geppetto_temporal import (
    BlockKind,
    ContextWindowExceeded,
    EngineBuilder,
    InferenceFailed,
    Session,
    create_worker,
)
from geppetto_temporal._render import StreamPrinter, format_compaction
from geppetto_temporal.chat import ReplyPrinter
from geppetto_temporal.context import (
    ContextDecision,
    ContextPolicy,
    ContextState,
    context_window_for,
    estimate_tokens,
    plan_context,
)
from geppetto_temporal.engines import EngineSpec
from geppetto_temporal.engines._errors import classify_error
from geppetto_temporal.engines.anthropic_messages import sdk_base_url
from geppetto_temporal.errors import ErrorType
from geppetto_temporal.events import ContextCompactedEvent, Event
from geppetto_temporal.retry import RetrySpec
from geppetto_temporal.testing import ChatCompletionsWire, ScriptedModelServer
from geppetto_temporal.tools import ToolRegistry
from geppetto_temporal.turns import (
    Block,
    PayloadKey,
    llm_text_block,
    system_block,
    tool_call_block,
    tool_use_block,
    user_block,
)
from geppetto_temporal.worker._worker import WORKFLOWS, workflow_runner
from tests.conftest import scripted_endpoints


def long_prompt(n: int, chars: int = 1200) -> str:
    """A distinct prompt of about `chars` characters (300 tokens at 4 characters a token)."""
    head = f"Prompt number {n}. "
    return head + " ".join(f"w{n}x{i}" for i in range(chars))[: chars - len(head)]


async def events_of(handle: Any) -> list[Event]:
    return [event async for event in handle.events()]


def compactions(events: list[Event]) -> list[ContextCompactedEvent]:
    return [e for e in events if isinstance(e, ContextCompactedEvent)]


def statuses(server: ScriptedModelServer, base_url: str) -> list[int | None]:
    return [r.status for r in server.requests(base_url) if r.method == "POST"]


async def test_scripted_window_refuses_like_each_provider(
    model_server: ScriptedModelServer, api_key_env: str
) -> None:
    base_url = model_server.add_script(
        {"context_window": 50, "rules": [{"name": "ack", "reply": {"text": "Noted."}}]}
    )
    chat = openai.AsyncOpenAI(base_url=base_url, api_key=api_key_env, max_retries=0)
    fits = await chat.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "x" * 200}]
    )
    # Prompt tokens by the window's own count: 200 characters at 4 a token.
    assert fits.usage is not None and fits.usage.prompt_tokens == 50
    spec = EngineSpec.parse("openai:scripted")
    with pytest.raises(openai.BadRequestError) as chat_error:
        await chat.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "x" * 201}]
        )
    assert chat_error.value.code == "context_length_exceeded"
    assert "maximum context length is 50 tokens" in chat_error.value.message
    assert classify_error(chat_error.value, spec).type == ErrorType.PROVIDER_CONTEXT_TOO_LONG
    with pytest.raises(openai.BadRequestError) as responses_error:
        await chat.responses.create(model="scripted", input="x" * 201)
    assert responses_error.value.code == "context_length_exceeded"
    assert "exceeds the context window" in responses_error.value.message
    anthropic_client = anthropic.AsyncAnthropic(
        base_url=sdk_base_url(base_url), api_key=api_key_env, max_retries=0
    )
    with pytest.raises(anthropic.BadRequestError) as anthropic_error:
        await anthropic_client.messages.create(
            model="scripted", max_tokens=10, messages=[{"role": "user", "content": "x" * 201}]
        )
    assert "prompt is too long: 51 tokens > 50 maximum" in str(anthropic_error.value)
    assert (
        classify_error(anthropic_error.value, EngineSpec.parse("anthropic:scripted")).type
        == ErrorType.PROVIDER_CONTEXT_TOO_LONG
    )
    await chat.close()
    await anthropic_client.close()


def test_plan_keeps_system_latest_prompt_and_pairs() -> None:
    blocks: list[Block] = [system_block("Be brief.", block_id="system-prompt")]
    for i in range(6):
        blocks += [
            user_block(long_prompt(i, 400)),
            tool_call_block(f"c{i}", "padded_tool", {"label": str(i), "chars": 2000}),
            tool_use_block(f"c{i}", result="r" * 2000),
            llm_text_block(f"answer {i}"),
        ]
    blocks += [
        user_block("latest"),
        tool_call_block("open", "padded_tool", {"label": "open", "chars": 2000}),
        tool_use_block("open", result="o" * 2000),
    ]
    plan = plan_context(blocks, window=2000, policy=ContextPolicy())
    sent = plan.blocks
    assert plan.compacted and plan.tokens_after <= 2000 * 0.6 < plan.tokens_before
    assert estimate_tokens(sent) <= plan.tokens_after + 10
    assert sent[0].text == "Be brief."
    # The latest prompt and the open call with its whole result are sent as they are.
    assert [b.text for b in sent[-3:-2]] == ["latest"]
    assert sent[-1].payload[PayloadKey.RESULT] == "o" * 2000
    # Stubs oldest first: a stubbed result never follows one sent whole.
    old_results = [b for b in sent[:-1] if b.kind == BlockKind.TOOL_USE]
    whole = [
        not str(b.payload[PayloadKey.RESULT]).startswith("[tool result of") for b in old_results
    ]
    assert whole == sorted(whole)
    assert str(old_results[0].payload[PayloadKey.RESULT]).startswith("[tool result of 2000 ")
    # Every call sent has its result right after it, and vice versa.
    calls = [b.call_id for b in sent if b.kind == BlockKind.TOOL_CALL]
    results = [b.call_id for b in sent if b.kind == BlockKind.TOOL_USE]
    assert calls == results
    # Turns left out are whole turns, and a note says so.
    assert plan.dropped_turns > 0
    assert sent[1].kind == BlockKind.SYSTEM and "left out" in sent[1].text
    assert sent[2].kind == BlockKind.USER
    # The input is untouched.
    assert blocks[3].payload[PayloadKey.RESULT] == "r" * 2000
    # With `off`, everything is sent.
    assert plan_context(blocks, window=2000, policy=ContextPolicy(strategy="off")).blocks == blocks


def test_plan_leaves_out_whole_steps_of_a_long_loop_and_remembers() -> None:
    blocks: list[Block] = [system_block("Be brief.", block_id="system-prompt"), user_block("go")]
    for i in range(30):
        blocks += [
            tool_call_block(f"c{i}", "padded_tool", {"key": "k", "chars": 2000}),
            tool_use_block(f"c{i}", result=f"r{i} " + "." * 2000),
        ]
    plan = plan_context(blocks, window=1500, policy=ContextPolicy())
    sent = plan.blocks
    assert plan.dropped_steps > 0 and plan.dropped_turns == 0
    assert [b.kind for b in sent[:3]] == [BlockKind.SYSTEM, BlockKind.USER, BlockKind.SYSTEM]
    assert "earlier steps of this turn" in sent[2].text
    calls = [b.call_id for b in sent if b.kind == BlockKind.TOOL_CALL]
    results = [b.call_id for b in sent if b.kind == BlockKind.TOOL_USE]
    assert calls == results and calls[-1] == "c29"
    assert str(sent[-1].payload[PayloadKey.RESULT]).startswith("r29 ")
    assert estimate_tokens(sent) <= 1500 * 0.6
    # The next step keeps what this one left out; a small step adds to the end only...
    state = plan.state(blocks, plan.tokens_after)
    small = [*blocks, tool_call_block("s", "padded_tool", {}), tool_use_block("s", result="ok")]
    nxt = plan_context(small, window=1500, policy=ContextPolicy(), previous=state)
    assert not nxt.compacted
    assert [b.id for b in nxt.blocks] == [b.id for b in sent] + [small[-2].id, small[-1].id]
    # ... and a large one leaves out more of the oldest steps, still whole ones.
    large = [
        *blocks,
        tool_call_block("c30", "padded_tool", {"key": "k", "chars": 2000}),
        tool_use_block("c30", result="r30 " + "." * 2000),
    ]
    nxt = plan_context(large, window=1500, policy=ContextPolicy(), previous=state)
    assert nxt.compacted and nxt.dropped_steps > plan.dropped_steps
    kept = [b.call_id for b in nxt.blocks if b.kind == BlockKind.TOOL_CALL]
    assert kept == [f"c{i}" for i in range(31 - len(kept), 31)]
    assert kept == [b.call_id for b in nxt.blocks if b.kind == BlockKind.TOOL_USE]


def test_a_recorded_decision_stands_for_the_plan() -> None:
    """What a step records is enough for a worker without memory to send the same view."""
    blocks: list[Block] = [system_block("Be brief.", block_id="system-prompt")]
    for i in range(4):
        blocks += [
            user_block(long_prompt(i, 400)),
            tool_call_block(f"c{i}", "padded_tool", {"key": "k", "chars": 2000}),
            tool_use_block(f"c{i}", result=f"r{i} " + "." * 2000),
            llm_text_block(f"answer {i}"),
        ]
    blocks.append(user_block("go"))
    for i in range(20):
        blocks += [
            tool_call_block(f"d{i}", "padded_tool", {"key": "k", "chars": 1000}),
            tool_use_block(f"d{i}", result=f"d{i} " + "." * 1000),
        ]
    policy = ContextPolicy()
    plan = plan_context(blocks, window=1500, policy=policy)
    assert plan.compacted and plan.stubbed and plan.dropped_turns and plan.dropped_steps
    state = plan.state(blocks, plan.tokens_after)
    decision = state.decision(blocks)
    # Block ids and nothing else: its size does not grow with the conversation.
    assert decision.kept_from and decision.steps and decision.stubbed_through
    assert len(decision.model_dump_json(exclude_defaults=True)) < 150
    loaded = ContextState.from_decision(decision, blocks, policy)
    assert loaded.stubbed == state.stubbed and loaded.omitted == state.omitted
    more = [*blocks, tool_call_block("e", "padded_tool", {}), tool_use_block("e", result="ok")]
    from_memory = plan_context(more, window=1500, policy=policy, previous=state)
    from_record = plan_context(more, window=1500, policy=policy, previous=loaded)
    assert [b.model_dump() for b in from_record.blocks] == [
        b.model_dump() for b in from_memory.blocks
    ]
    # A step records a summary's text once; later records name the inference that wrote it.
    written = decision.model_copy(update={"summary": "S", "summary_in": "s/inference/3"})
    assert written.recorded(wrote_summary=True) == written
    later = written.model_copy(update={"stubbed_through": "x"})
    record = later.recorded(wrote_summary=False)
    assert record.summary is None and record.summary_in == "s/inference/3"
    assert record.applied_to(written) == later
    assert later.same_as(record) and not later.same_as(written)
    assert record.applied_to(None).summary is None  # the reader fetches it from its inference
    assert ContextDecision().empty and not decision.empty


def test_plan_truncates_a_new_tool_result_larger_than_the_window() -> None:
    blocks: list[Block] = [
        user_block("read it"),
        tool_call_block("big", "padded_tool", {"key": "k", "chars": 20_000}),
        tool_use_block("big", result="head " + "." * 20_000),
    ]
    plan = plan_context(blocks, window=1500, policy=ContextPolicy())
    assert plan.truncated == ["big"] and plan.compacted
    sent = str(plan.blocks[-1].payload[PayloadKey.RESULT])
    assert sent.startswith("head ") and "truncated to" in sent and "of 20005 characters" in sent
    assert plan.protected_tokens <= estimate_tokens(plan.blocks) <= 1500
    assert blocks[-1].payload[PayloadKey.RESULT] == "head " + "." * 20_000
    # Off: nothing is truncated, and the prompt with its result is more than the window.
    strict = plan_context(blocks, window=1500, policy=ContextPolicy(truncate_tool_results=False))
    assert not strict.truncated and strict.protected_tokens > 1500


async def test_a_tool_result_larger_than_the_window_is_sent_truncated(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    call = {
        "name": "padded_tool",
        "arguments": {"key": uuid.uuid4().hex, "chars": 20_000, "last": 1},
    }
    script = {
        "context_window": 1500,
        "rules": [
            {"name": "done", "when": {"tool_results_contain": "FINAL"}, "reply": {"text": "done"}},
            {"name": "call", "reply": {"tool_calls": [call]}},
        ],
    }
    session, base_url = await new_session(
        script, configure=lambda b: b.tools("padded_tool").context_window(1500)
    )
    handle = await session.start_inference("read the big one")
    turn = await handle.wait()
    assert turn.last_text == "done"
    [result] = [b for b in turn.blocks if b.kind == BlockKind.TOOL_USE]
    assert len(result.payload[PayloadKey.RESULT]) == 20_000  # the turn keeps it whole
    assert statuses(model_server, base_url) == [200, 200]
    sent = [m for m in model_server.requests(base_url)[-1].body["messages"] if m["role"] == "tool"]
    assert sent[0]["content"].startswith("FINAL 1 ") and "truncated to" in sent[0]["content"]
    [event] = compactions(await events_of(handle))
    assert event.truncated_tool_results == [result.call_id]


async def test_long_session_completes_every_prompt_and_keeps_them(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    script = {"context_window": 1000, "rules": [{"name": "ack", "reply": {"text": "Noted."}}]}
    session, base_url = await new_session(
        script, configure=lambda b: b.no_tools().context_window(1000)
    )
    prompts = [long_prompt(n) for n in range(30)]
    seen: list[ContextCompactedEvent] = []
    for prompt in prompts:
        handle = await session.start_inference(prompt)
        turn = await handle.wait()
        assert turn.last_text == "Noted."
        seen += compactions(await events_of(handle))
    # The model never refused a request: each was compacted before it was sent.
    assert set(statuses(model_server, base_url)) == {200}
    assert seen and all(e.reason == "proactive" for e in seen)
    assert all(e.tokens_after < e.tokens_before for e in seen)
    assert max(e.dropped_turns for e in seen) > 0
    # The last request still carried the last prompt whole, and a note for what it left out.
    last = model_server.requests(base_url)[-1].body["messages"]
    assert last[-1] == {"role": "user", "content": prompts[-1]}
    assert any(m["role"] == "system" and "left out" in m["content"] for m in last)
    # Nothing lost: the session holds every prompt verbatim.
    transcript = await session.transcript()
    users = [b.text for b in transcript.blocks if b.kind == BlockKind.USER]
    assert users == prompts


async def test_summarize_sends_a_summary_of_the_turns_left_out(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    script = {
        "context_window": 1000,
        "rules": [
            {
                "name": "summary",
                "when": {"last_user_contains": "Conversation to summarise"},
                "reply": {"text": "SUMMARY: the user sent numbered prompts."},
            },
            {"name": "ack", "reply": {"text": "Noted."}},
        ],
    }
    session, base_url = await new_session(
        script, configure=lambda b: b.no_tools().context_window(1000).context_policy("summarize")
    )
    prompts = [long_prompt(n) for n in range(6)]
    seen: list[ContextCompactedEvent] = []
    for prompt in prompts:
        handle = await session.start_inference(prompt)
        assert (await handle.wait()).last_text == "Noted."
        seen += compactions(await events_of(handle))
    assert set(statuses(model_server, base_url)) == {200}
    requests = [r.body for r in model_server.requests(base_url)]
    summaries = [b for b in requests if "Conversation to summarise" in str(b["messages"][-1])]
    # The first summary was asked for the first prompt left out, verbatim.
    assert summaries and prompts[0] in summaries[0]["messages"][-1]["content"]
    # The conversation sent afterwards carries the summary in place of those turns.
    last = requests[-1]["messages"]
    assert last[-1] == {"role": "user", "content": prompts[-1]}
    notes = [m["content"] for m in last if m["role"] == "system"]
    assert any("SUMMARY: the user sent numbered prompts." in n for n in notes)
    assert any(e.summarized_turns > 0 for e in seen)
    # The summary's tokens count in its step's usage: the turn whose step summarised
    # reports more input than its own request held.
    turns = await session.turns()
    wire = ChatCompletionsWire()
    own = [wire.parse(b).estimated_tokens for b in requests if b not in summaries]
    reported = [t.metadata.usage.input_tokens for t in turns if t.metadata.usage is not None]
    assert len(own) == len(reported) == len(prompts)
    extra = [r - o for r, o in zip(reported, own, strict=True)]
    assert extra.count(0) == len(prompts) - len(summaries)
    assert all(e == 0 or e > 50 for e in extra)
    # And the session still has every prompt.
    users = [b.text for b in (await session.transcript()).blocks if b.kind == BlockKind.USER]
    assert users == prompts


def _payload(payloads: Any) -> dict[str, Any]:
    data = json.loads(payloads.payloads[0].data) if payloads.payloads else {}
    return data if isinstance(data, dict) else {}


async def test_long_tool_loop_with_large_results_completes(
    new_session: Any, model_server: ScriptedModelServer, client: Client
) -> None:
    steps = 200
    key = uuid.uuid4().hex
    call = {"name": "padded_tool", "arguments": {"key": key, "chars": 1600, "last": steps}}
    script = {
        "context_window": 1500,
        "rules": [
            # The model stops on the latest result: always sent whole, however long the loop.
            {"name": "done", "when": {"tool_results_contain": "FINAL"}, "reply": {"text": "done"}},
            {"name": "more", "reply": {"tool_calls": [call]}},
        ],
    }
    session, base_url = await new_session(
        script,
        configure=lambda b: (
            b.tools("padded_tool")
            .max_iterations(steps + 5)
            .context_window(1500)
            # Compaction goes on across the inference's continue-as-new.
            .steps_per_run(150)
        ),
    )
    handle = await session.start_inference("collect the parts")
    turn = await handle.wait()
    assert turn.last_text == "done"
    results = [b for b in turn.blocks if b.kind == BlockKind.TOOL_USE]
    # The turn keeps every result whole; only what was sent had stubs or left steps out.
    assert len(results) == steps
    assert all(len(b.payload[PayloadKey.RESULT]) == 1600 for b in results)
    requests = model_server.requests(base_url)
    assert len(requests) == steps + 1
    assert {r.status for r in requests} == {200}
    tool_messages = [
        [m["content"] for m in r.body["messages"] if m["role"] == "tool"] for r in requests
    ]
    # Early requests stubbed old results; late ones also left out the oldest steps.
    assert any(
        any(t.startswith("[tool result of 1600 characters") for t in ms) for ms in tool_messages
    )
    last = requests[-1].body["messages"]
    assert last[0] == {"role": "user", "content": "collect the parts"}
    assert last[1]["role"] == "system" and "earlier steps of this turn" in last[1]["content"]
    assert len(tool_messages[-1]) < 20  # of 200
    assert tool_messages[-1][-1].startswith(f"FINAL {steps} ")  # the open result goes whole
    events = compactions(await events_of(handle))
    assert events and max(e.dropped_steps for e in events) > 0
    # The inference continued as new, and its latest run, whose steps sent a compacted
    # conversation, replays from history alone: no model call, nothing recomputed.
    history = await handle.workflow_handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.continued_execution_run_id, "expected the inference to continue as new"
    # The decision travels by reference: recorded by the steps that changed it (here, with
    # results of a quarter of the window, nearly every step), a few block ids whatever the
    # loop's length, and named by the steps' inputs; the new run got it in its carry.
    assert _payload(started.input)["carry"]["context"]["steps"]
    recorded = [
        _payload(e.activity_task_completed_event_attributes.result).get("context")
        for e in history.events
        if e.HasField("activity_task_completed_event_attributes")
    ]
    named = [
        _payload(e.activity_task_scheduled_event_attributes.input).get("context_step")
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "geppetto.llm_step"
    ]
    decisions = [d for d in recorded if d is not None]
    assert 0 < len(decisions) <= len(named) and all(n is not None for n in named)
    assert max(len(json.dumps(d)) for d in decisions) < 200
    replayer = Replayer(
        workflows=WORKFLOWS, data_converter=client.data_converter, workflow_runner=workflow_runner()
    )
    await replayer.replay_workflow(history)
    assert len(model_server.requests(base_url)) == steps + 1


@pytest.mark.parametrize("provider", ["openai", "openai-responses", "anthropic"])
async def test_reactive_compaction_after_a_refusal(
    provider: str, new_session: Any, model_server: ScriptedModelServer
) -> None:
    # The engine does not know the window (an unknown model): only the provider's 400 tells.
    script = {"context_window": 800, "rules": [{"name": "ack", "reply": {"text": "Noted."}}]}
    session, base_url = await new_session(
        script,
        configure=lambda b: EngineBuilder(
            b.build().model_copy(update={"provider": provider})
        ).no_tools(),
    )
    handles = []
    for n in range(3):
        handle = await session.start_inference(long_prompt(n))
        assert (await handle.wait()).last_text == "Noted."
        handles.append(handle)
    # The third prompt's first request was refused, the compacted retry answered.
    assert statuses(model_server, base_url) == [200, 200, 400, 200]
    [event] = compactions(await events_of(handles[2]))
    assert event.reason == "reactive" and event.dropped_turns >= 1
    assert event.tokens_after < event.tokens_before
    users = [b.text for b in (await session.transcript()).blocks if b.kind == BlockKind.USER]
    assert users == [long_prompt(n) for n in range(3)]


@pytest.mark.parametrize("window_known", [True, False])
async def test_oversized_prompt_fails_typed_then_the_session_goes_on(
    window_known: bool, new_session: Any, model_server: ScriptedModelServer
) -> None:
    script = {"context_window": 1000, "rules": [{"name": "ack", "reply": {"text": "Noted."}}]}

    def configure(builder: EngineBuilder) -> EngineBuilder:
        builder = builder.no_tools()
        return builder.context_window(1000) if window_known else builder

    session, base_url = await new_session(script, configure=configure)
    with pytest.raises(ContextWindowExceeded) as failed:
        await (await session.start_inference(long_prompt(0, 6000))).wait()
    assert isinstance(failed.value, InferenceFailed)  # existing handlers still catch it
    assert "context window" in str(failed.value)
    assert failed.value.turn is not None and failed.value.tokens is not None
    assert failed.value.tokens > 1000
    if window_known:
        # Refused before any request: the worker knew it could not fit.
        assert "more than the model's context window of 1000" in str(failed.value)
        assert failed.value.context_window == 1000
        assert "larger than the window" in failed.value.tried
        assert statuses(model_server, base_url) == []
    else:
        # One request, refused; nothing older to leave out, so no second try.
        assert "nothing more can be left out" in str(failed.value)
        assert failed.value.context_window is None
        assert "nothing more could be left out" in failed.value.tried
        assert statuses(model_server, base_url) == [400]
    turn = await (await session.start_inference("hi")).wait()
    assert turn.last_text == "Noted."
    # The oversized prompt stays in the session, left out of what is sent.
    users = [b.text for b in (await session.transcript()).blocks if b.kind == BlockKind.USER]
    assert users == [long_prompt(0, 6000), "hi"]
    assert statuses(model_server, base_url)[-1] == 200


async def test_compaction_that_cannot_fit_fails_typed_then_the_session_goes_on(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    # The window is unknown to the engine; the provider's is 300 tokens. The second prompt
    # alone is larger: its request is refused, compacted (the first turn left out), and
    # refused again.
    script = {"context_window": 300, "rules": [{"name": "ack", "reply": {"text": "Noted."}}]}
    session, base_url = await new_session(script, configure=lambda b: b.no_tools())
    assert (await (await session.start_inference(long_prompt(0, 800))).wait()).last_text
    with pytest.raises(ContextWindowExceeded) as failed:
        await (await session.start_inference(long_prompt(1, 1300))).wait()
    assert "retried once" in failed.value.tried and "left out 1 earlier turns" in failed.value.tried
    assert failed.value.tokens is not None and failed.value.tokens > 300
    assert statuses(model_server, base_url) == [200, 400, 400]
    # Usable: the next prompt's refused request is compacted (both turns out) and answered.
    turn = await (await session.start_inference("hi")).wait()
    assert turn.last_text == "Noted."
    assert statuses(model_server, base_url)[-2:] == [400, 200]


SUMMARY_SCRIPT_RULE = {
    "name": "summary",
    "when": {"last_user_contains": "Conversation to summarise"},
    "reply": {"text": "SUMMARY: the user sent numbered prompts."},
}


async def test_a_retried_step_does_not_summarise_again(
    new_session: Any, model_server: ScriptedModelServer
) -> None:
    # The third prompt's request is the first compacted one (turn 0 left out and summarised);
    # the model fails it once with a 500, and the step is retried.
    script = {
        "context_window": 1000,
        "rules": [
            SUMMARY_SCRIPT_RULE,
            {
                "name": "flaky",
                "when": {"last_user_contains": "Prompt number 2."},
                "reply": {"text": "Noted."},
                "faults": [{"status": 500}],
            },
            {"name": "ack", "reply": {"text": "Noted."}},
        ],
    }
    session, base_url = await new_session(
        script,
        configure=lambda b: (
            b.no_tools()
            .context_window(1000)
            .context_policy("summarize")
            .llm_activity(retry=RetrySpec(initial_interval_seconds=0.1, maximum_attempts=3))
        ),
    )
    for n in range(3):
        assert (await (await session.start_inference(long_prompt(n))).wait()).last_text
    bodies = [r.body for r in model_server.requests(base_url)]
    summaries = [b for b in bodies if "Conversation to summarise" in str(b["messages"][-1])]
    assert statuses(model_server, base_url) == [200, 200, 200, 500, 200]
    # One summary, written by the failed attempt and taken over by the retry, whose
    # request carries it; its usage is counted once, in the step that succeeded.
    assert len(summaries) == 1
    assert "SUMMARY: the user sent numbered prompts." in str(bodies[-1]["messages"])
    turns = await session.turns()
    usage = turns[-1].metadata.usage
    assert usage is not None
    wire = ChatCompletionsWire()
    assert (
        usage.input_tokens
        == wire.parse(bodies[-1]).estimated_tokens + wire.parse(summaries[0]).estimated_tokens
    )


async def test_another_worker_continues_from_the_recorded_decision(
    client: Client, tool_registry: ToolRegistry, model_server: ScriptedModelServer
) -> None:
    """A worker that ran none of the session's steps sends what the first one decided:
    it reads the decision (and its summary) from the workflows, and writes no summary."""
    script = {
        "context_window": 1000,
        "rules": [SUMMARY_SCRIPT_RULE, {"name": "ack", "reply": {"text": "Noted."}}],
    }
    base_url = model_server.add_script(script)
    queue = f"context-{uuid.uuid4().hex[:8]}"
    builder = (
        EngineBuilder("openai:scripted")
        .base_url(base_url)
        .llm_activity(heartbeat_seconds=5)
        .no_tools()
        .context_window(1000)
        .context_policy("summarize")
    )

    def worker() -> Any:
        return create_worker(
            client,
            task_queue=queue,
            tools=tool_registry,
            endpoints=scripted_endpoints(model_server.url),
        )

    async with worker():
        session = await Session.create(
            client, builder, session_id=f"test-{uuid.uuid4().hex[:10]}", task_queue=queue
        )
        for n in range(4):
            assert (await (await session.start_inference(long_prompt(n))).wait()).last_text
        # A short prompt leaves out nothing more: its step records the decision it
        # inherited, naming the inference that wrote the summary instead of repeating it.
        hi = await session.start_inference("hi")
        assert (await hi.wait()).last_text == "Noted."
    first = [r.body["messages"] for r in model_server.requests(base_url)]
    assert sum("Conversation to summarise" in str(m[-1]) for m in first) >= 1
    history = await hi.workflow_handle.fetch_history()
    [record] = [
        _payload(e.activity_task_completed_event_attributes.result)["context"]
        for e in history.events
        if e.HasField("activity_task_completed_event_attributes")
    ]
    assert "summary" not in record
    assert record["summary_in"].startswith(f"{session.session_id}/inference/")
    assert int(record["summary_in"].rsplit("/", 1)[1]) < 5  # an earlier inference wrote it
    async with worker():  # a new worker: no memory of the session
        assert (await (await session.start_inference("again")).wait()).last_text == "Noted."
    requests = [r.body["messages"] for r in model_server.requests(base_url)]
    [sent] = requests[len(first) :]  # one request: no summary written anew
    # The same turns left out, the same summary (read from the inference that wrote it):
    # the first worker's last request, plus its answer and the new prompt.
    assert sent[:-2] == first[-1]
    assert sent[-1] == {"role": "user", "content": "again"}
    assert any("SUMMARY: the user sent numbered prompts." in str(m) for m in sent)


def test_printers_show_a_compaction_in_one_line() -> None:
    event = ContextCompactedEvent(
        reason="proactive",
        tokens_before=1320,
        tokens_after=880,
        context_window=1500,
        stubbed_tool_results=["call_1", "call_2"],
        stubbed_total=5,
        dropped_turns=3,
        summarized_turns=3,
        dropped_steps=4,
        dropped_blocks=27,
    )
    expected = (
        "[context compacted: ~1,320 → ~880 tokens of 1,500; stubbed 2 tool results (5 in all), "
        "left out 3 turns, 3 summarised, left out 4 steps, 27 blocks out]"
    )
    for printer in (StreamPrinter, ReplyPrinter):
        out = io.StringIO()
        console = Console(file=out, width=300, color_system=None)
        shown = printer(console)
        if isinstance(shown, StreamPrinter):
            shown.handle(event)
        else:
            shown.show(event)
        assert out.getvalue().strip().splitlines() == [expected], printer
    reactive = ContextCompactedEvent(reason="reactive", tokens_before=900, tokens_after=450)
    assert format_compaction(reactive) == (
        "context compacted after a refusal: ~900 → ~450 tokens; nothing left out"
    )


def test_window_table_matches_the_longest_prefix() -> None:
    assert context_window_for("openai", "gpt-4o-mini") == 128_000
    assert context_window_for("openai", "gpt-4-0613") == 8_192
    assert context_window_for("openai", "gpt-4-32k-0613") == 32_768
    assert context_window_for("openai", "gpt-4-1106-preview") == 128_000
    assert context_window_for("openai", "gpt-5-mini") == 272_000
    assert context_window_for("openai", "gpt-5-chat-latest") == 128_000
    assert context_window_for("openai", "o1-preview-2024-09-12") == 128_000
    assert context_window_for("anthropic", "claude-sonnet-4-5-20250929") == 200_000
    assert context_window_for("anthropic", "claude-sonnet-4-6") == 1_000_000
    assert context_window_for("anthropic", "claude-2.0") == 100_000
    assert context_window_for("openai", "my-local-model") is None
    assert context_window_for("openai", "gpt-4o", 32_000) == 32_000
