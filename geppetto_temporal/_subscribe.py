"""Reading an inference's event stream: typed events, offsets as `seq`, cumulative text rebuilt."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.workflow_streams import PollInput, PollResult
from temporalio.converter import PayloadConverter

from geppetto_temporal.events import (
    EVENTS_TOPIC,
    Event,
    InferenceFinishedEvent,
    InferenceStartedEvent,
    PartialEvent,
    PartialThinkingEvent,
    parse_event,
)
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


class _Completions:
    """Rebuilds `completion` of partial events, which travel with only their delta.

    Text is kept per (message, attempt): a retried call starts its completion
    afresh, and a late delta from an attempt the server already gave up on
    never mixes into the current attempt's text.
    """

    def __init__(self) -> None:
        self._text: dict[tuple[str, int, str], str] = {}

    def apply(self, event: Event) -> None:
        if isinstance(event, PartialEvent | PartialThinkingEvent):
            key = (event.meta.message_id or "", event.meta.attempt or 1, event.type)
            event.completion = self._text.get(key, "") + event.delta
            self._text[key] = event.completion


async def follow_inference(
    client: Client,
    inference_id: str,
    *,
    from_seq: int = 0,
    defaults: dict[str, Any] | None = None,
    poll_cooldown: timedelta = POLL_COOLDOWN,
) -> AsyncIterator[Event]:
    """Yield an inference's events from `from_seq` on, live, ending after `inference-finished`.

    It reads from offset 0 even when resuming, so `completion` of partial
    events is right; earlier events are just not yielded.
    """
    completions = _Completions()
    # Activities publish lean metadata (message id, attempt, time); the ids
    # every event shares are filled in here from the workflow's first event.
    shared: dict[str, Any] = dict(defaults or {})
    async for offset, data in _stream_items(client, inference_id, EVENTS_TOPIC, poll_cooldown):
        event = parse_event(data)
        event.meta.seq = offset
        if isinstance(event, InferenceStartedEvent):
            shared.update(
                {k: v for k, v in event.meta.model_dump().items() if k in _SHARED and v is not None}
            )
        for name, value in shared.items():
            if getattr(event.meta, name) is None:
                setattr(event.meta, name, value)
        completions.apply(event)
        if offset >= from_seq:
            yield event
        if isinstance(event, InferenceFinishedEvent):
            return
