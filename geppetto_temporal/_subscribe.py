"""Reading an inference's event stream: typed events, offsets as `seq`, cumulative text rebuilt."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.workflow_streams import PollInput, PollResult
from temporalio.converter import PayloadConverter

from geppetto_temporal.events import (
    EVENTS_TOPIC,
    Event,
    EventMeta,
    InferenceFinishedEvent,
    InferenceStartedEvent,
    PartialEvent,
    PartialThinkingEvent,
    parse_event,
)
from geppetto_temporal.live._hub import TEXT
from geppetto_temporal.live._merge import LivePiece, TextLedger, merge_live
from geppetto_temporal.workflows._models import InferenceRun

_SHARED = ("session_id", "inference_id", "turn_id", "model")

#: How often a caught-up subscriber polls. Polls are queries: they write no history.
POLL_COOLDOWN = timedelta(milliseconds=50)
#: The stream's read-only poll (a query handler the Workflow Stream registers next to its
#: long-poll update). Reading by query keeps watchers out of the history: with update
#: long-polls every subscriber added about 32 history events per streamed second.
_POLL_QUERY = "__temporal_workflow_stream_poll"


async def _stream_items(
    client: Client, workflow_id: str, topic: str, poll_cooldown: timedelta
) -> AsyncIterator[tuple[int, Any]]:
    """(offset, value) of a workflow stream's items from offset 0, polled by query, forever."""
    handle = client.get_workflow_handle(workflow_id)
    converter = client.data_converter.payload_converter
    offset = 0
    while True:
        result = await handle.query(
            _POLL_QUERY, PollInput(topics=[topic], from_offset=offset), result_type=PollResult
        )
        first = result.items[0].offset if result.items else result.next_offset
        if first > offset:
            # The workflow continued as new: the events before `first` are in earlier runs.
            async for item in _earlier_items(client, workflow_id, topic, offset, first):
                yield item
            offset = first
            continue
        for item in result.items:
            yield item.offset, _decode(converter, item.data)
        offset = result.next_offset
        if not result.more_ready and not result.items:
            await asyncio.sleep(poll_cooldown.total_seconds())


def _decode(converter: PayloadConverter, data: str) -> Any:
    # The stream's documented wire form: base64 of the serialized Payload.
    return converter.from_payload(Payload.FromString(base64.b64decode(data)))


async def _earlier_items(
    client: Client, workflow_id: str, topic: str, start: int, end: int
) -> AsyncIterator[tuple[int, Any]]:
    """Items `start:end` of a stream that continued as new, read from its closed runs.

    A closed run answers a query by being replayed on a worker: seconds for a long
    run, paid only by a subscriber that starts (or falls) behind the current run.
    """
    runs: list[InferenceRun] = await client.get_workflow_handle(workflow_id).query(
        "runs", result_type=list[InferenceRun]
    )
    converter = client.data_converter.payload_converter
    for run in runs:
        offset = max(start, run.stream_start)
        stop = min(end, run.stream_end)
        handle = client.get_workflow_handle(workflow_id, run_id=run.run_id)
        while offset < stop:
            result = await handle.query(
                _POLL_QUERY, PollInput(topics=[topic], from_offset=offset), result_type=PollResult
            )
            for item in result.items:
                if item.offset < stop:
                    yield item.offset, _decode(converter, item.data)
            if result.next_offset <= offset:
                break
            offset = result.next_offset


async def follow_inference(
    client: Client,
    inference_id: str,
    *,
    from_seq: int = 0,
    defaults: dict[str, Any] | None = None,
    poll_cooldown: timedelta = POLL_COOLDOWN,
    live: bool = True,
) -> AsyncIterator[Event]:
    """Yield an inference's events from `from_seq` on, live, ending after `inference-finished`.

    It reads from offset 0 even when resuming, so `completion` of partial
    events is right; earlier events are just not yielded.

    With `live`, a running step's text also comes straight from its worker
    (`geppetto_temporal.live`) as `partial` events marked `meta.live`, whose
    `seq` is that of the durable event before them; durable `partial` events
    then carry only the text the live ones had not (`delta` may be empty). Every
    durable event is yielded once, with its own `seq`, so resuming from
    `seq + 1` of the last event seen skips no durable event and repeats none.
    """
    ledger = TextLedger()
    # Activities publish lean metadata (message id, attempt, time); the ids
    # every event shares are filled in here from the workflow's first event.
    shared: dict[str, Any] = dict(defaults or {})
    durable = _stream_items(client, inference_id, EVENTS_TOPIC, poll_cooldown)
    items: AsyncGenerator[Any] = (
        merge_live(client, inference_id, durable, ledger, from_seq=from_seq)
        if live
        else _closable(durable)
    )
    async with contextlib.aclosing(items):
        async for event in _events(items, ledger, shared, from_seq):
            yield event


async def _closable(items: AsyncIterator[Any]) -> AsyncGenerator[Any]:
    async for item in items:
        yield item


async def _events(
    items: AsyncIterator[Any], ledger: TextLedger, shared: dict[str, Any], from_seq: int
) -> AsyncIterator[Event]:
    offset = -1
    async for item in items:
        if isinstance(item, LivePiece):
            yield _live_event(item, offset, shared)
            continue
        offset, data = item
        event = parse_event(data)
        event.meta.seq = offset
        if isinstance(event, InferenceStartedEvent):
            shared.update(
                {k: v for k, v in event.meta.model_dump().items() if k in _SHARED and v is not None}
            )
        for name, value in shared.items():
            if getattr(event.meta, name) is None:
                setattr(event.meta, name, value)
        if isinstance(event, PartialEvent | PartialThinkingEvent):
            key = (event.meta.message_id or "", event.meta.attempt or 1, event.type)
            event.delta = ledger.durable(key, event.delta)
            event.completion = ledger.shown(key)
        if offset >= from_seq:
            yield event
        if isinstance(event, InferenceFinishedEvent):
            return


def _live_event(piece: LivePiece, seq: int, shared: dict[str, Any]) -> Event:
    """A `partial` (or `partial-thinking`) event from live text, after durable event `seq`."""
    meta = EventMeta(
        message_id=piece.message_id,
        attempt=piece.attempt,
        seq=seq,
        ts=datetime.now(UTC),
        live=True,
        **{k: v for k, v in shared.items() if k in _SHARED},
    )
    if piece.kind == TEXT:
        return PartialEvent(delta=piece.delta, completion=piece.completion, meta=meta)
    return PartialThinkingEvent(delta=piece.delta, completion=piece.completion, meta=meta)
