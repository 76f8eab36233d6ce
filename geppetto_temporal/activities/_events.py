"""Publishing an LLM call's live events from the activity to its inference's stream."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from temporalio import activity
from temporalio.contrib.workflow_streams import TopicHandle, WorkflowStreamClient

from geppetto_temporal.events import (
    EVENTS_TOPIC,
    ErrorEvent,
    EventMeta,
    PartialEvent,
    PartialThinkingEvent,
    StartEvent,
)

# Flushing is driven by our own timer (coalescing deltas first), so the
# client's own interval only matters as a backstop.
_CLIENT_BATCH_INTERVAL = timedelta(seconds=30)


class StepEventPublisher:
    """Publishes `start` and coalesced `partial` events of one LLM call.

    Deltas that arrive within one flush interval become one `partial` event
    and one signal, so a long reply costs a signal per interval, not per token.
    """

    def __init__(self, *, message_id: str, interval: float) -> None:
        info = activity.info()
        self._meta = EventMeta(message_id=message_id, attempt=info.attempt)
        self._interval = interval
        self._client = WorkflowStreamClient.from_within_activity(
            batch_interval=_CLIENT_BATCH_INTERVAL
        )
        self._topic: TopicHandle[Any] = self._client.topic(EVENTS_TOPIC)
        self._text = ""
        self._thinking = ""
        self._flusher: asyncio.Task[None] | None = None

    def _meta_now(self) -> dict[str, Any]:
        meta = self._meta.model_copy(update={"ts": datetime.now(UTC)})
        return meta.model_dump(mode="json", exclude_none=True)

    def _publish(
        self,
        event: StartEvent | PartialEvent | PartialThinkingEvent | ErrorEvent,
        *,
        now: bool = False,
    ) -> None:
        data = event.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
        data["meta"] = self._meta_now()
        self._topic.publish(data, force_flush=now)

    def on_text(self, delta: str) -> None:
        """A text delta arrived."""
        self._text += delta

    def on_thinking(self, delta: str) -> None:
        """A reasoning delta arrived."""
        self._thinking += delta

    def _drain(self, *, now: bool) -> None:
        if self._thinking:
            self._publish(PartialThinkingEvent(delta=self._thinking))
            self._thinking = ""
        if self._text:
            self._publish(PartialEvent(delta=self._text), now=now)
            self._text = ""

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._drain(now=True)

    async def failed(self, message: str, *, retrying: bool) -> None:
        """Publish what was produced and an `error` event, before the activity raises."""
        self._drain(now=False)
        self._publish(ErrorEvent(error_string=message, retrying=retrying))
        with contextlib.suppress(Exception):
            await self._client.flush()

    async def __aenter__(self) -> StepEventPublisher:
        await self._client.__aenter__()
        # Sent with the first batch of text (or at the end): no signal of its own.
        self._publish(StartEvent())
        self._flusher = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._drain(now=False)
        # Exiting flushes: everything published reaches the workflow before the
        # activity's result does, so the stream stays in order.
        await self._client.__aexit__(exc_type, exc, tb)
