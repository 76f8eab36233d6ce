"""Live deltas: streaming costs history neither per watcher nor per delta, and text stays exact.

A reply streams for about 11 s. Its deltas reach subscribers live from the worker's
live channel while the durable stream gets only coarse batches; so the inference's
history stays within about one event per streamed second, three watchers add
(almost) nothing, every watcher's deltas spell the final text exactly, and a late or
reconnecting subscriber gets every durable event once. Meanwhile a worker without
the live channel streams another reply durably. Counts only, never time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from temporalio.client import Client

from geppetto_temporal import EngineBuilder, Session, create_worker
from geppetto_temporal.events import Event, FinalEvent, PartialEvent
from geppetto_temporal.live import (
    LiveConfig,
    LiveDelta,
    LiveHub,
    LiveServer,
    find_live_steps,
    read_live,
)
from geppetto_temporal.testing import ScriptedModelServer
from tests.conftest import scripted_endpoints

#: 240 chunks of 5 characters, 45 ms apart: about 10.8 s of streaming (the scripted
#: server's pace; slower on a loaded machine, which only lowers events per second).
STREAM_SECONDS = 10.8
TEXT = "".join(f"w{i:03d} " for i in range(240))
LONG = {"rules": [{"reply": {"text": TEXT, "chunk_size": 5, "chunk_delay": 0.045}}]}
#: A one-step inference's history with nothing signalled: started, two workflow tasks
#: of three events, the activity's three, completed. Streaming may add 1 per second.
BASE_EVENTS = 11
SHORT_TEXT = "slowly " * 40
SHORT = {"rules": [{"reply": {"text": SHORT_TEXT, "chunk_size": 7, "chunk_delay": 0.04}}]}


def durable(events: list[Event]) -> list[Event]:
    return [e for e in events if not e.meta.live]


def spelled(events: list[Event]) -> str:
    return "".join(e.delta for e in events if isinstance(e, PartialEvent))


def live_partials(events: list[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, PartialEvent) and e.meta.live]


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [e async for e in events]


async def history_events(client: Client, workflow_id: str) -> int:
    return len((await client.get_workflow_handle(workflow_id).fetch_history()).events)


async def without_live(client: Client, model_server: ScriptedModelServer) -> list[Event]:
    """An inference on a worker with no live channel, watched: the durable stream alone."""
    task_queue = f"no-live-{uuid.uuid4().hex[:8]}"
    base_url = model_server.add_script(SHORT)
    # Durable batches every 0.4 s here, so the ~1.6 s reply arrives in several of them.
    builder = EngineBuilder("openai:scripted").base_url(base_url)
    builder = builder.llm_activity(heartbeat_seconds=5, durable_batch_seconds=0.4)
    plain = create_worker(
        client, task_queue=task_queue, endpoints=scripted_endpoints(model_server.url), live=False
    )
    async with plain:
        session = await Session.create(
            client, builder, session_id=f"no-live-{uuid.uuid4().hex[:8]}", task_queue=task_queue
        )
        handle = await session.start_inference("no live channel")
        events = await collect(handle.events())
        assert (await handle.wait()).last_text == SHORT_TEXT
    return events


async def test_streaming_costs_no_history_per_watcher_and_stays_exact(
    client: Client, new_session: Any, model_server: ScriptedModelServer
) -> None:
    (alone, alone_url), (watched, _) = await new_session(LONG), await new_session(LONG)
    unwatched = await alone.start_inference("stream alone")
    handle = await watched.start_inference("stream to three")
    probe: dict[str, Any] = {}

    async def reconnecting() -> tuple[list[Event], list[Event]]:
        """A subscriber that drops after a few live deltas and resumes from its last seq."""
        first: list[Event] = []
        async for event in handle.events():
            first.append(event)
            if len(live_partials(first)) == 3:
                # While it streams: the step's advert, and its endpoint wants the token.
                [advert] = await find_live_steps(client, handle.inference_id)
                async with httpx.AsyncClient(trust_env=False) as http:
                    wrong = await http.get(advert.url[:-4] + "xxxx")
                    bare = await http.get(advert.url.rsplit("/", 1)[0] + "/")
                probe.update(advert=advert, wrong=wrong.status_code, bare=bare.status_code)
                break
        rest = [e async for e in handle.events(from_seq=(first[-1].meta.seq or 0) + 1)]
        return first, rest

    one, two, (first, rest), _, plain = await asyncio.gather(
        collect(handle.events()),
        collect(handle.events()),
        reconnecting(),
        unwatched.wait(),
        without_live(client, model_server),
    )
    turn = await handle.wait()
    assert turn.last_text == (await unwatched.wait()).last_text == TEXT
    late = await collect(handle.events())

    # History: at most one event per streamed second beyond the fixed cost (seconds as the
    # model server streamed them: a loaded machine streams slower and signals more), and
    # watchers cost nothing.
    [request] = model_server.requests(alone_url)
    streamed = max(request.chunk_times[-1] - request.chunk_times[0], STREAM_SECONDS)
    alone_events = await history_events(client, unwatched.inference_id)
    watched_events = await history_events(client, handle.inference_id)
    assert alone_events <= BASE_EVENTS + streamed, (alone_events, streamed)
    assert watched_events <= alone_events + 5, (alone_events, watched_events)

    # Watchers got the text live, in many more deltas than the durable batches hold,
    # and their deltas spell the final text exactly, with no repeat.
    durable_partials = [e for e in late if isinstance(e, PartialEvent)]
    for events in (one, two):
        final_at = next(i for i, e in enumerate(events) if isinstance(e, FinalEvent))
        assert len(live_partials(events[:final_at])) > max(5, len(durable_partials))
        assert spelled(events) == TEXT
        assert [e.completion for e in events if isinstance(e, PartialEvent)][-1] == TEXT
        assert [(e.meta.seq, e.type) for e in durable(events)] == [
            (e.meta.seq, e.type) for e in late
        ]

    # A late subscriber: every durable event from offset 0 and the exact text, nothing live.
    assert not live_partials(late)
    assert [e.meta.seq for e in late] == list(range(len(late)))
    assert spelled(late) == TEXT

    # A subscriber that reconnects from its last seq misses no durable event and gets none twice.
    assert [(e.meta.seq, e.type) for e in durable(first) + durable(rest)] == [
        (e.meta.seq, e.type) for e in late
    ]
    assert [e.completion for e in rest if isinstance(e, PartialEvent)][-1] == TEXT

    # The live endpoint: advertised on loopback with the step's ids; a wrong token is refused.
    advert = probe["advert"]
    assert advert.url.startswith("http://127.0.0.1:")
    assert advert.message_id == live_partials(first)[0].meta.message_id and advert.attempt == 1
    assert probe["wrong"] == 404 and probe["bare"] == 404

    # A worker without the live channel still streams, durably: batches, exact text.
    assert not live_partials(plain)
    assert len([e for e in plain if isinstance(e, PartialEvent)]) > 1
    assert spelled(plain) == SHORT_TEXT
    assert [e.meta.seq for e in plain] == list(range(len(plain)))


async def test_the_live_endpoint_serves_a_step_from_any_position() -> None:
    hub = LiveHub()
    server = LiveServer(hub, LiveConfig(address="127.0.0.1:0"))
    url = await server.start()
    try:
        step = hub.open("m1", attempt=2)
        assert step.url is not None and step.url.startswith(url + "/live/")
        step.add("partial", "Hello, ")
        step.add("partial-thinking", "hmm")

        async def read() -> list[LiveDelta]:
            assert step.url is not None
            return [d async for d in read_live(step.url, text_from=3, thinking_from=1)]

        reader = asyncio.create_task(read())
        await asyncio.sleep(0)  # let it connect while the step still streams
        step.add("partial", "world")
        step.close()
        got = await asyncio.wait_for(reader, 30)
        text = "".join(d.delta for d in got if d.kind == "partial")
        assert text == "lo, world"
        assert next(d.pos for d in got if d.kind == "partial") == 3
        assert [(d.pos, d.delta) for d in got if d.kind == "partial-thinking"] == [(1, "mm")]
        # A finished step stays readable for a while, from any position.
        again = [d async for d in read_live(step.url, text_from=7, thinking_from=3)]
        assert [(d.kind, d.pos, d.delta) for d in again] == [("partial", 7, "world")]
    finally:
        await server.close()
    assert hub.url is None


async def test_a_reader_that_catches_up_gets_the_kinds_in_the_order_they_streamed() -> None:
    # Reasoning, then the answer, then more reasoning: a reader that connects after all of
    # it (or resumes in the middle) gets them interleaved as they streamed, runs of one
    # kind as one piece, never one kind first and then the other.
    step = LiveHub().open("m1", attempt=1)
    for kind, delta in [
        ("partial-thinking", "First "),
        ("partial-thinking", "think. "),
        ("partial", "The "),
        ("partial", "answer."),
        ("partial-thinking", " Then check."),
    ]:
        step.add(kind, delta)
    step.close()
    got = [piece async for piece in step.follow({})]
    assert got == [
        ("partial-thinking", 0, "First think. "),
        ("partial", 0, "The answer."),
        ("partial-thinking", 13, " Then check."),
    ]
    resumed = [piece async for piece in step.follow({"partial": 2, "partial-thinking": 8})]
    assert resumed == [
        ("partial-thinking", 8, "ink. "),
        ("partial", 2, "e answer."),
        ("partial-thinking", 13, " Then check."),
    ]
