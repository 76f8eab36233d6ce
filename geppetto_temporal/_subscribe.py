"""Reading an inference's event stream: typed events, offsets as `seq`, cumulative text rebuilt."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.contrib.workflow_streams import WorkflowStreamClient

from geppetto_temporal.events import (
    EVENTS_TOPIC,
    Event,
    InferenceFinishedEvent,
    InferenceStartedEvent,
    PartialEvent,
    PartialThinkingEvent,
    parse_event,
)

_SHARED = ("session_id", "inference_id", "turn_id", "model")

#: How often a caught-up subscriber polls; each poll is an update in the inference's history.
POLL_COOLDOWN = timedelta(milliseconds=50)


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
    stream = WorkflowStreamClient.create(client, inference_id)
    completions = _Completions()
    # Activities publish lean metadata (message id, attempt, time); the ids
    # every event shares are filled in here from the workflow's first event.
    shared: dict[str, Any] = dict(defaults or {})
    async for item in stream.subscribe(EVENTS_TOPIC, from_offset=0, poll_cooldown=poll_cooldown):
        event = parse_event(item.data)
        event.meta.seq = item.offset
        if isinstance(event, InferenceStartedEvent):
            shared.update(
                {k: v for k, v in event.meta.model_dump().items() if k in _SHARED and v is not None}
            )
        for name, value in shared.items():
            if getattr(event.meta, name) is None:
                setattr(event.meta, name, value)
        completions.apply(event)
        if item.offset >= from_seq:
            yield event
        if isinstance(event, InferenceFinishedEvent):
            return
