"""The event stream of an inference: order, completeness, replay, retries, cancel, fan-out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError

from geppetto_temporal import InferenceCancelled
from geppetto_temporal.events import (
    Event,
    EventSink,
    FinalEvent,
    InferenceFinishedEvent,
    InfoEvent,
    InterruptEvent,
    ListSink,
    PartialEvent,
    QueueSink,
    StartEvent,
    ToolCallEvent,
    ToolCallExecuteEvent,
    ToolCallExecutionResultEvent,
    event_to_json,
    parse_event,
)
from geppetto_temporal.turns import InferenceStatus

TOOL_SCRIPT = {
    "rules": [
        {
            "name": "calls",
            "when": {"last_role": "user"},
            "reply": {
                "text": "Checking both.",
                "chunk_size": 3,
                "tool_calls": [
                    {"name": "get_weather", "arguments": {"city": "Paris"}},
                    {"name": "calculate", "arguments": {"expression": "2 * 21"}},
                ],
            },
        },
        {
            "name": "answer",
            "when": {"last_role": "tool"},
            "reply": {
                "text": "Paris is fine and the answer is 42.",
                "chunk_size": 4,
                "chunk_delay": 0.01,
            },
        },
    ]
}


def types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


def durable(events: list[Event]) -> list[Event]:
    """The events of the durable stream (not the live deltas merged in between)."""
    return [e for e in events if not e.meta.live]


def texts(events: list[Event]) -> dict[tuple[str, int], str]:
    """Each message attempt's text as its `partial` deltas (live and durable) spell it."""
    out: dict[tuple[str, int], str] = {}
    for e in events:
        if isinstance(e, PartialEvent):
            key = (e.meta.message_id or "", e.meta.attempt or 1)
            out[key] = out.get(key, "") + e.delta
    return out


def collapse_partials(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if name == "partial" and out and out[-1] == "partial":
            continue
        out.append(name)
    return out


async def test_tool_inference_stream_is_ordered_and_complete(new_session: Any) -> None:
    session, _ = await new_session(TOOL_SCRIPT)
    handle = await session.start_inference("weather and math")
    events = [e async for e in handle.events()]
    turn = await handle.wait()
    assert collapse_partials(types(events)) == [
        "inference-started",
        "start",
        "partial",
        "final",
        "tool-call",
        "tool-call",
        *sorted_tool_phase(events),
        "start",
        "partial",
        "final",
        "inference-finished",
    ]
    # seq is the stream offset: 0, 1, 2, ... with no gaps; a live delta has the seq of the
    # durable event before it.
    assert [e.meta.seq for e in durable(events)] == list(range(len(durable(events))))
    seqs = [e.meta.seq or 0 for e in events]
    assert seqs == sorted(seqs)
    # Every event says where it belongs.
    assert all(e.meta.inference_id == handle.inference_id for e in events)
    assert all(e.meta.session_id == session.session_id for e in events)
    finals = [e for e in events if isinstance(e, FinalEvent)]
    assert [f.text for f in finals] == ["Checking both.", "Paris is fine and the answer is 42."]
    assert finals[1].text == turn.last_text
    # Deltas concatenate to the final text, and completion is cumulative.
    second_message = finals[1].meta.message_id
    partials = [
        e for e in events if isinstance(e, PartialEvent) and e.meta.message_id == second_message
    ]
    assert "".join(p.delta for p in partials) == finals[1].text
    assert partials[-1].completion == finals[1].text
    assert all(f.meta.usage is not None for f in finals)
    # Tool events pair by call id and carry results.
    calls = [e for e in events if isinstance(e, ToolCallEvent)]
    results = {e.tool_result.id: e for e in events if isinstance(e, ToolCallExecutionResultEvent)}
    assert [c.tool_call.name for c in calls] == ["get_weather", "calculate"]
    assert json.loads(results[calls[1].tool_call.id].tool_result.result)["result"] == 42
    finished = events[-1]
    assert isinstance(finished, InferenceFinishedEvent)
    assert finished.status == InferenceStatus.COMPLETED
    assert finished.meta.usage is not None and finished.meta.usage.output_tokens > 0


def sorted_tool_phase(events: list[Event]) -> list[str]:
    """The tool phase: each call's execute precedes its result (parallel calls interleave)."""
    phase = [
        e for e in events if isinstance(e, ToolCallExecuteEvent | ToolCallExecutionResultEvent)
    ]
    for call_id in {e.tool_call.id for e in phase if isinstance(e, ToolCallExecuteEvent)}:
        kinds = [
            e.type
            for e in phase
            if (isinstance(e, ToolCallExecuteEvent) and e.tool_call.id == call_id)
            or (isinstance(e, ToolCallExecutionResultEvent) and e.tool_result.id == call_id)
        ]
        assert kinds == ["tool-call-execute", "tool-call-execution-result"]
    return [e.type for e in phase]


async def test_late_subscriber_gets_identical_stream(new_session: Any) -> None:
    session, _ = await new_session(TOOL_SCRIPT)
    handle = await session.start_inference("weather and math, again")
    live = [e async for e in handle.events()]
    await handle.wait()
    late = [e async for e in handle.events()]
    # The same durable events; live deltas may have brought some text first, not other text.
    assert [(e.meta.seq, e.type) for e in late] == [(e.meta.seq, e.type) for e in durable(live)]
    assert texts(late) == texts(live)
    # Resuming from an offset gives the tail, with completions still cumulative.
    tail = [e async for e in handle.events(from_seq=5)]
    assert [event_to_json(e) for e in tail] == [event_to_json(e) for e in late[5:]]


async def test_two_subscribers_see_the_same_stream(new_session: Any) -> None:
    session, _ = await new_session(TOOL_SCRIPT)
    handle = await session.start_inference("two watchers")
    first, second = ListSink(), ListSink()
    sinks: list[EventSink] = [first, QueueSink()]
    await asyncio.gather(handle.forward_events(*sinks), handle.forward_events(second))
    assert [(e.meta.seq, e.type) for e in durable(first.events)] == [
        (e.meta.seq, e.type) for e in durable(second.events)
    ]
    assert texts(first.events) == texts(second.events)
    assert first.events[-1].type == "inference-finished"


async def test_retried_attempt_is_marked(new_session: Any) -> None:
    script = {
        "rules": [
            {
                "reply": {"text": "attempt text " * 6, "chunk_size": 5, "chunk_delay": 0.02},
                "faults": [{"cut_after_chunks": 6}],
            }
        ]
    }
    session, _ = await new_session(script)
    handle = await session.start_inference("retry me")
    events = [e async for e in handle.events()]
    starts = [e for e in events if isinstance(e, StartEvent)]
    assert [s.meta.attempt for s in starts] == [1, 2]
    assert starts[0].meta.message_id == starts[1].meta.message_id
    errors = [e for e in events if e.type == "error"]
    assert len(errors) == 1 and errors[0].retrying is True  # type: ignore[union-attr]
    assert errors[0].meta.attempt == 1
    # Partials of attempt 2 restart the completion rather than appending to attempt 1's.
    second = [e for e in events if isinstance(e, PartialEvent) and e.meta.attempt == 2]
    final = next(e for e in events if isinstance(e, FinalEvent))
    assert second[-1].completion == final.text == "attempt text " * 6
    assert final.meta.attempt == 2


async def test_cancel_yields_interrupt_then_finished_cancelled(new_session: Any) -> None:
    script = {
        "rules": [{"reply": {"text": "slow words " * 50, "chunk_size": 3, "chunk_delay": 0.03}}]
    }
    session, _ = await new_session(script)
    handle = await session.start_inference("go slowly")
    seen: list[Event] = []
    async for event in handle.events():
        seen.append(event)
        if isinstance(event, PartialEvent) and len(event.completion) > 20:
            await handle.cancel()
    with pytest.raises(InferenceCancelled) as cancelled:
        await handle.wait()
    turn = cancelled.value.turn
    assert turn is not None
    interrupt = next(e for e in seen if isinstance(e, InterruptEvent))
    assert interrupt.text == turn.last_text
    assert interrupt.text.startswith("slow words") and len(interrupt.text) < len("slow words " * 50)
    finished = seen[-1]
    assert (
        isinstance(finished, InferenceFinishedEvent)
        and finished.status == InferenceStatus.CANCELLED
    )
    assert types(seen).index("interrupt") < types(seen).index("inference-finished")


async def test_session_events_follow_successive_inferences(new_session: Any) -> None:
    session, _ = await new_session({"rules": [{"reply": {"text": "re: {last_user}"}}]})
    await (await session.start_inference("zero")).wait()

    async def collect() -> list[Event]:
        got: list[Event] = []
        finished = 0
        async for event in session.events(poll_interval=0.05):
            got.append(event)
            if isinstance(event, InferenceFinishedEvent):
                finished += 1
                if finished == 2:
                    return got
        return got

    watcher = asyncio.create_task(collect())
    await asyncio.sleep(0.2)
    await (await session.start_inference("one")).wait()
    await session.submit_prompt("two")
    events = await asyncio.wait_for(watcher, 30)
    finals = [e.text for e in events if isinstance(e, FinalEvent)]
    assert finals == ["re: one", "re: two"]


def test_events_round_trip_geppetto_json() -> None:
    raw = {
        "type": "partial",
        "meta": {"message_id": "m1", "session_id": "s", "inference_id": "s/inference/1", "seq": 3},
        "delta": "lo",
        "completion": "hello",
    }
    event = parse_event(raw)
    assert isinstance(event, PartialEvent) and event.completion == "hello"
    assert json.loads(event_to_json(event)) == raw


def test_an_event_type_from_a_newer_worker_reads_as_info() -> None:
    # A reader older than the worker keeps reading: the unknown event is kept whole.
    raw = {"type": "agent-paused", "meta": {"seq": 7, "inference_id": "s/inference/1"}, "x": 1}
    for form in (raw, json.dumps(raw), json.dumps(raw).encode()):
        event = parse_event(form)
        assert isinstance(event, InfoEvent)
        assert event.meta.seq == 7 and event.data == raw
        assert event.message.startswith("agent-paused ")
    # A known type with bad fields is still an error, not silently turned into info.
    with pytest.raises(ValidationError):
        parse_event({"type": "partial", "delta": 5, "completion": ["x"]})


async def test_every_event_carries_the_shared_ids(new_session: Any) -> None:
    session, _ = await new_session(TOOL_SCRIPT)
    handle = await session.start_inference("ids everywhere")
    events = [e async for e in handle.events()]
    turn = await handle.wait()
    assert {e.meta.turn_id for e in events} == {turn.id}
    assert {e.meta.model for e in events} == {"scripted"}


async def test_short_step_events_are_rebuilt_from_its_blocks(new_session: Any) -> None:
    # A step that ends before its first flush signals nothing: its result says so instead
    # of carrying `start` and the whole text a second time, and the workflow publishes them.
    session, _ = await new_session({"rules": [{"reply": {"text": "Short and sweet."}}]})
    handle = await session.start_inference("quick one")
    turn = await handle.wait()
    events = [e async for e in handle.events()]
    assert types(events) == ["inference-started", "start", "partial", "final", "inference-finished"]
    start, partial = events[1], events[2]
    assert isinstance(start, StartEvent) and isinstance(partial, PartialEvent)
    assert partial.delta == partial.completion == turn.last_text == "Short and sweet."
    assert start.meta.message_id == partial.meta.message_id == events[3].meta.message_id
    assert partial.meta.attempt == 1
    history = await handle.workflow_handle.fetch_history()
    [completed] = [
        json.loads(e.activity_task_completed_event_attributes.result.payloads[0].data)
        for e in history.events
        if e.HasField("activity_task_completed_event_attributes")
    ]
    assert completed["events_from_blocks"] is True and "events" not in completed


#: About 1.5 s of streaming: enough delta batches that per-poll history costs would show.
STREAMED = {"rules": [{"reply": {"text": "word " * 60, "chunk_size": 5, "chunk_delay": 0.025}}]}


async def test_watching_writes_no_history(new_session: Any) -> None:
    """Subscribers read by query: three watchers add no event to the inference's history."""
    from temporalio.api.enums.v1 import EventType

    session, _ = await new_session(STREAMED)
    handle = await session.start_inference("watched")
    streams = await asyncio.gather(*(collect(handle.events()) for _ in range(3)))
    turn = await handle.wait()
    history = await handle.workflow_handle.fetch_history()
    kinds = [e.event_type for e in history.events]
    update_kinds = {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ADMITTED,
    }
    assert not [k for k in kinds if k in update_kinds]
    # Each watcher still saw every event, live, with the same offsets and the whole text.
    assert len({tuple((e.meta.seq, e.type) for e in durable(s)) for s in streams}) == 1
    for events in streams:
        partials = [e for e in events if isinstance(e, PartialEvent)]
        assert len(partials) > 1  # live batches, not one event at the end
        assert partials[-1].completion == turn.last_text
        assert isinstance(events[-1], InferenceFinishedEvent)


async def collect(events: Any) -> list[Event]:
    return [e async for e in events]
